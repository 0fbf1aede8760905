"""Generate image test corpora with Pillow and NumPy (no downloads): every format and mode the
ingest job must handle, the hostile files it must refuse, and photo-like JPEGs for the benchmark."""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 36867
CAPTURED = "2024:05:17 08:30:15"


@dataclass(frozen=True)
class Valid:
    name: str
    width: int  # after EXIF orientation
    height: int
    frames: int = 1


def pattern(width: int, height: int, seed: int) -> np.ndarray:
    """An RGB uint8 picture: gradients, a disc, and some noise (compressible, not flat)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 100 * np.sin((x + y) / (3 + seed % 5))
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(width, height) * 0.25) ** 2
    rgb = np.stack([r, g, b], axis=-1)
    rgb[disc] = (rgb[disc] * 0.3 + np.array([200, 40, 90]) * 0.7).astype(np.float32)
    rgb += rng.normal(0, 12, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def rgb_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(pattern(width, height, seed), "RGB")


def with_alpha(image: Image.Image, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    alpha = np.tile(np.linspace(0, 255, image.width, dtype=np.uint8), (image.height, 1))
    alpha[rng.random(alpha.shape) < 0.1] = 255
    out = image.copy()
    out.putalpha(Image.fromarray(alpha, "L"))
    return out


def exif_bytes(orientation: int | None = None, captured: str | None = None) -> bytes:
    exif = Image.Exif()
    if orientation:
        exif[EXIF_ORIENTATION] = orientation
    if captured:  # a dict, not get_ifd(): Pillow 10.4 (the floor) does not write an IFD made that way
        exif[EXIF_IFD] = {EXIF_DATETIME_ORIGINAL: captured}
    return exif.tobytes()


def make_valid(folder: Path) -> list[Valid]:
    """Good images in every format and mode; returns what each one should measure as."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = 64, 48
    base = rgb_image(w, h, 1)
    gray = base.convert("L")
    made: list[Valid] = []

    def save(name: str, image: Image.Image, fmt: str, **options: object) -> None:
        image.save(folder / name, fmt, **options)
        made.append(Valid(name, image.width, image.height))

    save("rgb.jpg", base, "JPEG", quality=90)
    save("l.jpg", gray, "JPEG", quality=90)
    save("cmyk.jpg", base.convert("CMYK"), "JPEG", quality=90)
    save("rgb.png", base, "PNG")
    save("l.png", gray, "PNG")
    save("la.png", with_alpha(gray.convert("RGB"), 2).convert("LA"), "PNG")
    save("rgba.png", with_alpha(base, 3), "PNG")
    save("p.png", base.quantize(32), "PNG")
    palette_alpha = base.quantize(16)
    palette_alpha.info["transparency"] = 0
    save("p_transparent.png", palette_alpha, "PNG", transparency=0)
    save("one.png", gray.convert("1"), "PNG")
    sixteen = (np.asarray(gray).astype(np.uint16) * 257 + np.arange(w, dtype=np.uint16)).astype(np.uint16)
    save("i16.png", Image.fromarray(sixteen), "PNG")
    save("rgb.webp", base, "WEBP", lossless=True)
    save("rgba.webp", with_alpha(base, 4), "WEBP", lossless=True)
    save("p.gif", base.quantize(64), "GIF")
    save("rgb.tif", base, "TIFF")
    save("cmyk.tif", base.convert("CMYK"), "TIFF")
    save("i16.tif", Image.fromarray(sixteen), "TIFF")
    save("one.tif", gray.convert("1"), "TIFF")
    save("rgb.bmp", base, "BMP")
    save("p.bmp", base.quantize(16), "BMP")
    save("one.bmp", gray.convert("1"), "BMP")
    frames = [rgb_image(w, h, seed).quantize(32) for seed in (5, 6, 7)]
    frames[0].save(folder / "anim.gif", "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    made.append(Valid("anim.gif", w, h, frames=3))
    frames[0].save(folder / "anim.webp", "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    made.append(Valid("anim.webp", w, h, frames=3))
    # Stored 80x30, orientation 6 (rotate 90° clockwise to view): shown 30x80.
    rgb_image(80, 30, 8).save(folder / "rotated.jpg", "JPEG", quality=90, exif=exif_bytes(6, CAPTURED))
    made.append(Valid("rotated.jpg", 30, 80))
    rgb_image(80, 30, 9).save(folder / "mirrored.png", "PNG", exif=exif_bytes(8))
    made.append(Valid("mirrored.png", 30, 80))
    return made


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG that declares width x height pixels but holds a few bytes."""
    small = io.BytesIO()
    Image.new("L", (8, 8), 0).save(small, "PNG")
    data = bytearray(small.getvalue())
    ihdr_at = data.index(b"IHDR")
    data[ihdr_at + 4 : ihdr_at + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_at : ihdr_at + 17])) & 0xFFFFFFFF
    data[ihdr_at + 17 : ihdr_at + 21] = struct.pack(">I", crc)
    return bytes(data)


def make_bad(folder: Path, oversize_bytes: int) -> dict[str, str]:
    """Hostile and broken files; returns {name: a word the quarantine reason must contain}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    whole = io.BytesIO()
    rgb_image(200, 150, 10).save(whole, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    png = io.BytesIO()
    rgb_image(40, 30, 11).save(png, "PNG")
    (folder / "really_png.jpg").write_bytes(png.getvalue())
    (folder / "notes.jpg").write_text("meeting notes, not a picture\n" * 20)
    (folder / "bomb.png").write_bytes(png_header_bomb(100_000, 100_000))
    os.symlink("/etc/passwd", folder / "passwd.jpg")
    noise = np.random.default_rng(12).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    Image.fromarray(noise, "RGB").save(folder / "huge.png", "PNG", compress_level=0)
    assert (folder / "huge.png").stat().st_size > oversize_bytes
    return {
        "empty.jpg": "empty",
        "truncated.jpg": "truncated",
        "really_png.jpg": "PNG",
        "notes.jpg": "not a",
        "bomb.png": "decompression bomb",
        "passwd.jpg": "symbolic link",
        "huge.png": "max_bytes",
    }


def photo(megapixels: float, seed: int) -> Image.Image:
    """A photo-like RGB picture of about `megapixels`, 3:2, built cheaply at low resolution and
    upscaled, with fine grain added: compresses like a camera JPEG, not like noise or a flat fill."""
    width = int((megapixels * 1e6 * 1.5) ** 0.5)
    height = int(width / 1.5)
    rng = np.random.default_rng(seed)
    small = rgb_image(max(width // 16, 8), max(height // 16, 8), seed).resize((width, height), Image.BICUBIC)
    grain = rng.integers(-6, 7, (height, width // 4, 1), dtype=np.int16).repeat(4, axis=1)[:, :width]
    pixels = np.asarray(small, dtype=np.int16)
    pixels[:, : grain.shape[1]] += grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEG photos from 0.3 to 12 MP (kept if already there: generating is the slow part)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(0.3), np.log(12.0), count))
    paths = []
    for index, megapixels in enumerate(sizes):
        path = folder / f"photo_{index:04d}.jpg"
        if not path.exists():
            temp = path.with_suffix(".part")
            photo(float(megapixels), seed * 100_000 + index).save(temp, "JPEG", quality=88)
            os.replace(temp, path)
        paths.append(path)
    return paths
