"""Image checks and measurements for ingest_images: pure functions of a file's bytes (Pillow + NumPy).

Runs in the job's worker processes. Pillow and NumPy are imported inside the functions, so importing
this module stays cheap. Every problem with a file is a `Rejected` carrying one line a person can act
on; nothing here touches the database or moves a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# What we open: Pillow knows many more formats, some of which run external programs (EPS) or are
# rarely-fuzzed parsers; a camera/upload inbox needs these.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
EXTENSION_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".dib": "BMP",
}
FORMAT_EXTENSION = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}
FORMAT_EXTENSION |= {"TIFF": ".tif", "BMP": ".bmp", "DIB": ".dib"}
SAME_FORMATS = ({"JPEG", "MPO"}, {"BMP", "DIB"})  # a name for one may hold the other
REFUSED_FORMATS = {"EPS"}  # Pillow runs Ghostscript to decode it
# The text of Pillow's errors for a well-formed file in a variant it does not implement.
UNSUPPORTED_VARIANT = re.compile(r"unsupported|not supported|unknown raw mode|unknown pixel mode", re.I)
MAX_FRAMES = 5000  # an animation with more frames is refused rather than decoded for minutes
DHASH_SIZE = 8  # 8 rows x 8 differences = 64 bits
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 36867
EXIF_DATETIME = 306
TIFF_BITS_PER_SAMPLE = 258
THUMB_QUALITY = 80
# Tests only: a file of this name hangs in its decode (how the tests reach file_timeout).
TEST_STALL_ENV = "RUNNER_INGEST_TEST_STALL"
TEST_STALL_S = 3600.0
BACKGROUND = 255  # transparent pixels are measured and shown as if on white paper


class Rejected(Exception):
    """The file cannot be ingested; the message is one line saying why and what to do."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    max_pixels: int
    thumb_size: int
    thumb_format: str  # "webp" | "jpeg"
    formats: tuple[str, ...] = FORMATS  # Pillow format names to open


@dataclass(frozen=True, slots=True)
class Identity:
    """Which version of a file was read: a move checks the file is still this one."""

    size: int
    mtime_ns: int
    inode: int
    device: int


@dataclass(frozen=True, slots=True)
class Measured:
    """Everything recorded about one good image."""

    identity: Identity
    sha256: str
    format: str
    mode: str
    width: int
    height: int
    frames: int
    byte_size: int
    captured_at: datetime | None
    channel_means: list[float]
    channel_stds: list[float]
    brightness: dict[str, Any]
    dhash: int  # signed 64-bit, as the database stores it
    thumbnail: str


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    sha256: str | None = None  # of the bytes read, when they were read


def read_bytes(path: Path, max_bytes: int) -> tuple[bytes, Identity]:
    """The file's bytes, refusing symlinks, non-regular files, empty and over-size files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise Rejected("it is a symbolic link; put the real file in the inbox instead") from None
        raise Rejected(f"cannot be read ({exc.strerror}); check its permissions") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Rejected(
                "it is not a regular file (a device, pipe or socket); only image files belong here"
            )
        if info.st_size == 0:
            raise Rejected("the file is empty (0 bytes); the upload probably failed, send it again")
        if info.st_size > max_bytes:
            raise Rejected(
                f"{info.st_size} bytes is over the max_bytes limit of {max_bytes}; "
                "send a smaller file or raise max_bytes"
            )
        chunks, left = [], info.st_size + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise Rejected(f"it grew past the max_bytes limit of {max_bytes} while being read; send it again")
    return data, Identity(len(data), info.st_mtime_ns, info.st_ino, info.st_dev)


def analyse(path: str, limits: Limits, thumbs: str) -> Measured | Failed:
    """Check, decode, measure and thumbnail one file; never raises for a bad file."""
    if os.environ.get(TEST_STALL_ENV) == Path(path).name:
        time.sleep(TEST_STALL_S)  # tests only: a decode that never ends, for file_timeout
    sha = None
    try:
        data, identity = read_bytes(Path(path), limits.max_bytes)
        sha = hashlib.sha256(data).hexdigest()
        return _analyse(data, identity, sha, Path(path).name, limits, Path(thumbs))
    except Rejected as exc:
        return Failed(str(exc), sha)
    except MemoryError:
        return Failed("decoding it ran out of memory; lower max_pixels or send a smaller image", sha)
    except Exception as exc:  # a surprise in a library must cost one file, not the batch
        return Failed(f"it could not be processed ({_error(exc)}); report this file", sha)


def _analyse(data: bytes, identity: Identity, sha: str, name: str, limits: Limits, thumbs: Path) -> Measured:
    import numpy as np
    from PIL import ImageOps

    image, frames = decode(data, name, limits.max_pixels, limits.formats)
    try:
        original_format, original_mode = image.format or "?", image.mode
        declared_bits = declared_bit_depth(image, data)
        captured_at = capture_time(image)
        ImageOps.exif_transpose(image, in_place=True)
        width, height = image.size
        work = normalise(image, declared_bits)
        # Pillow's histogram is one pass in C over the decoded image, with no copy into NumPy.
        counts = np.array(work.histogram(), dtype=np.float64).reshape(len(work.getbands()), 256)
        means, stds = channel_stats(counts)
        luma = work if work.mode == "L" else work.convert("L")
        brightness = brightness_summary(counts[0] if work.mode == "L" else np.array(luma.histogram()))
        hash_value = dhash(luma)
        thumbnail = write_thumbnail(work, thumbs, sha, limits)
    except Rejected:
        raise
    except Exception as exc:
        raise Rejected(
            f"it could not be processed after decoding ({_error(exc)}); report this file"
        ) from None
    return Measured(
        identity=identity,
        sha256=sha,
        format=original_format,
        mode=original_mode,
        width=width,
        height=height,
        frames=frames,
        byte_size=len(data),
        captured_at=captured_at,
        channel_means=means,
        channel_stds=stds,
        brightness=brightness,
        dhash=hash_value,
        thumbnail=str(thumbnail),
    )


def decode(data: bytes, name: str, max_pixels: int, formats: tuple[str, ...] = FORMATS) -> tuple[Any, int]:
    """Open, verify(), reopen and decode every frame; returns (first frame loaded, frame count).

    Only `formats` are opened (a DIB, a BMP without its file header, counts as BMP)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels
    opened = opened_formats(formats)
    fmt = "image"
    with warnings.catch_warnings():
        # Pillow warns between max_pixels and twice that, and raises above: both mean "refuse".
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            fmt = header_format(data, opened) or fmt
            with Image.open(io.BytesIO(data), formats=opened) as probe:
                fmt = probe.format or fmt
                _check_extension(name, fmt)
                probe.verify()
            image = Image.open(io.BytesIO(data), formats=opened)
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > MAX_FRAMES:
                raise Rejected(
                    f"it has {frames} frames, more than {MAX_FRAMES}; split or shorten the animation"
                )
            for index in range(frames):
                image.seek(index)
                image.load()
            if frames > 1:
                image.seek(0)
                image.load()
        except Rejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise Rejected(
                f"it declares more than max_pixels = {max_pixels} pixels (a possible decompression bomb); "
                "if it is a real image, raise max_pixels"
            ) from None
        except UnidentifiedImageError:
            raise Rejected(not_accepted(data, formats)) from None
        except MemoryError:
            raise
        except Exception as exc:
            if UNSUPPORTED_VARIANT.search(str(exc)):
                raise Rejected(
                    f"Pillow cannot decode this variant of {fmt} ({_error(exc)}); the file may be fine: "
                    "convert it to PNG or JPEG and put that in the inbox"
                ) from None
            raise Rejected(
                f"the {fmt} data is damaged or truncated ({_error(exc)}); ask the sender for the file again"
            ) from None
    return image, frames


def opened_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The Pillow formats to try for `formats`: a DIB is a BMP without its file header."""
    return (*formats, "DIB") if "BMP" in formats and "DIB" not in formats else formats


def header_format(data: bytes, formats: tuple[str, ...]) -> str | None:
    """The first of `formats` whose signature the data starts with (what it claims to be), or None."""
    from PIL import Image

    Image.preinit()
    if any(fmt not in Image.OPEN for fmt in formats):
        Image.init()
    prefix = data[:16]
    for fmt in formats:
        if fmt not in Image.OPEN:
            continue
        accept = Image.OPEN[fmt][1]
        try:
            claims = accept is None or accept(prefix)
        except Exception:
            continue
        if claims and not isinstance(claims, str):  # a str is Pillow's "looks like it, but" warning
            return fmt
    return None


def not_accepted(data: bytes, formats: tuple[str, ...]) -> str:
    """Why data that none of `formats` opens is refused: the format it is, if Pillow knows it."""
    from PIL import Image

    found = None
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as other:  # header only, no decode
        found = other.format
    if found and found not in formats:
        article = "an" if found[0] in "AEIO" else "a"
        return (
            f"its content is {article} {found} image; accepted: {', '.join(formats)}; "
            f"add {found} to `formats` to take it"
        )
    either = f"{', '.join(formats[:-1])} or {formats[-1]}" if len(formats) > 1 else formats[0]
    return f"its content is not a {either} image; check what the sender meant to send"


def check_formats(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The `formats` setting, upper-cased and checked against what Pillow opens; ValueError if not."""
    from PIL import Image

    Image.init()
    wanted = tuple(dict.fromkeys(name.strip().upper() for name in names if name.strip()))
    unknown = [name for name in wanted if name not in Image.OPEN]
    if not wanted or unknown:
        raise ValueError(
            f"formats = {', '.join(names)}: {'unknown: ' + ', '.join(unknown) if unknown else 'empty'}; "
            f"expected names from {', '.join(sorted(set(Image.OPEN) - REFUSED_FORMATS))}"
        )
    refused = [name for name in wanted if name in REFUSED_FORMATS]
    if refused:
        raise ValueError(f"formats = {', '.join(refused)}: refused, Pillow runs an external program for it")
    return wanted


def _check_extension(name: str, fmt: str) -> None:
    suffix = Path(name).suffix.lower()
    claimed = EXTENSION_FORMATS.get(suffix)
    if claimed is not None and claimed != fmt and {claimed, fmt} not in SAME_FORMATS:
        proper = FORMAT_EXTENSION.get(fmt, f".{fmt.lower()}")
        raise Rejected(
            f"the name says {suffix} but the content is {fmt}; rename it to {Path(name).stem}{proper} "
            "and put it back in the inbox"
        )


def capture_time(image: Any) -> datetime | None:
    """EXIF DateTimeOriginal (else DateTime) as a naive datetime: cameras record local time, no zone."""
    try:
        exif = image.getexif()
        value = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
    except Exception:
        return None  # an unreadable EXIF block does not make the picture bad
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def normalise(image: Any, declared_bits: int | None = None) -> Any:
    """An 8-bit 'L' or 'RGB' image of any mode: alpha composited onto white, 16-bit scaled to 8.

    Grey modes (1, L, LA, I;16, I, F) become L; everything else (P, RGBA, CMYK, YCbCr, ...) RGB.
    An alpha channel that carries nothing (one value everywhere, as some writers leave it at 0) is
    ignored. 16-bit samples are scaled by the bits they use: `declared_bits` (PNG sBIT, TIFF
    BitsPerSample) or else the fewest bits that hold the largest sample, so a 12-bit scan or 8-bit
    values in a 16-bit file look as a viewer shows them, not black.
    """
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image)
        if mode == "F":
            scaled = np.clip(values, 0, 255).astype(np.uint8)
        else:
            values = np.clip(values, 0, 65535).astype(np.uint32)
            shift = sample_bits(values, declared_bits) - 8
            scaled = (values >> shift).astype(np.uint8)
        return Image.fromarray(scaled)
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        base = "L" if mode[0] == "L" else "RGB"
        alpha = image.getchannel("A")
        low, high = alpha.getextrema()
        if low == high:  # the same alpha everywhere says nothing about the picture
            return image.convert(base)
        flat = Image.new(base, image.size, (BACKGROUND,) * len(base))
        flat.paste(image.convert(base), mask=alpha)
        return flat
    return image.convert("RGB")


def sample_bits(values: Any, declared_bits: int | None) -> int:
    """How many bits (8 to 16) the samples of a 16-bit image use: as declared when the file
    declares fewer than 16 (unless a sample is larger), else the fewest that hold the largest sample.
    A declared 16 is only the container's size: 12-bit cameras write their samples in it."""
    largest = int(values.max()) if values.size else 0
    used = largest.bit_length()
    if declared_bits is not None and declared_bits < 16:
        used = max(used, declared_bits)
    return min(max(used, 8), 16)


def declared_bit_depth(image: Any, data: bytes) -> int | None:
    """Significant bits per sample where the file says so: PNG sBIT, TIFF BitsPerSample."""
    if image.format == "TIFF":
        try:
            bits = image.tag_v2.get(TIFF_BITS_PER_SAMPLE)
        except Exception:
            return None
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) if bits and all(isinstance(b, int) and 0 < b <= 16 for b in bits) else None
    if image.format == "PNG":
        return png_significant_bits(data)
    return None


def png_significant_bits(data: bytes) -> int | None:
    """The largest value of the sBIT chunk (which comes before the image data), if there is one."""
    at = 8  # the PNG signature
    while at + 8 <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        kind = data[at + 4 : at + 8]
        if kind == b"sBIT":
            values = data[at + 8 : at + 8 + min(length, 4)]
            return max(values) if values and 0 < max(values) <= 16 else None
        if kind in (b"IDAT", b"IEND"):
            return None
        at += 12 + length
    return None


def channel_stats(counts: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean and population standard deviation from exact histograms (one row of 256
    counts per channel of an 8-bit image)."""
    import numpy as np

    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for row in np.asarray(counts, dtype=np.float64):
        total = row.sum()
        mean = float(row @ values / total)
        variance = float(row @ (values - mean) ** 2 / total)
        means.append(round(mean, 4))
        stds.append(round(variance**0.5, 4))
    return means, stds


def brightness_summary(counts: Any) -> dict[str, Any]:
    """Brightness (ITU-R 601 luma, 0-255) from its 256-bin histogram: mean, 5/50/95th percentiles,
    share of dark (< 32) and bright (>= 224) pixels, and a 16-bin histogram of shares."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    cumulative = np.cumsum(counts) / total
    return {
        "mean": round(float(counts @ np.arange(256) / total), 4),
        "p05": int(np.searchsorted(cumulative, 0.05)),
        "p50": int(np.searchsorted(cumulative, 0.50)),
        "p95": int(np.searchsorted(cumulative, 0.95)),
        "dark": round(float(counts[:32].sum() / total), 4),
        "bright": round(float(counts[224:].sum() / total), 4),
        "bins16": [round(float(x), 4) for x in counts.reshape(16, 16).sum(axis=1) / total],
    }


def dhash(luma: Any) -> int:
    """64-bit difference hash of an 'L' image: 9x8 box-averaged, each bit = right pixel brighter.
    Returned as a signed 64-bit integer (what BIGINT holds)."""
    import numpy as np
    from PIL import Image

    small = np.asarray(luma.resize((DHASH_SIZE + 1, DHASH_SIZE), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    value = int.from_bytes(np.packbits(bits).tobytes(), "big")
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def thumbnail_path(thumbs: Path, sha: str, thumb_format: str) -> Path:
    return thumbs / sha[:2] / f"{sha}.{'webp' if thumb_format == 'webp' else 'jpg'}"


def write_thumbnail(work: Any, thumbs: Path, sha: str, limits: Limits) -> Path:
    """Shrink `work` in place and write it (temp name, then rename: derived data, rewritten freely)."""
    target = thumbnail_path(thumbs, sha, limits.thumb_format)
    target.parent.mkdir(parents=True, exist_ok=True)
    work.thumbnail((limits.thumb_size, limits.thumb_size))
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if limits.thumb_format == "webp":
        work.save(temp, "WEBP", quality=THUMB_QUALITY, method=0)
    else:
        work.save(temp, "JPEG", quality=THUMB_QUALITY)
    os.replace(temp, target)
    return target


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
