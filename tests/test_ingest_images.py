"""The shipped ingest_images job: every format and mode measured right, hostile files quarantined,
duplicates found, and the three-folder / one-row-per-file invariant surviving kill -9."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import COMMAND_TIMEOUT_S, Project, command_line, wait_until
from imagecorpus import CAPTURED, make_bad, make_valid, pattern, rgb_image
from PIL import Image, ImageOps

MAX_BYTES = 2_000_000
THUMB_SIZE = 32
KILL_ROUNDS = 4


def configure(project: Project, *, extra: str = "", **params: object) -> dict[str, Path]:
    root = project.root
    folders = {name: root / name for name in ("inbox", "processed", "quarantine", "thumbs")}
    folders["inbox"].mkdir(parents=True, exist_ok=True)
    settings = {
        "max_bytes": MAX_BYTES,
        "thumb_size": THUMB_SIZE,
        "processed": folders["processed"],
        "quarantine": folders["quarantine"],
        "thumbs": folders["thumbs"],
        **params,
    }
    lines = "\n".join(f"{key} = {value}" for key, value in settings.items())
    project.configure(f"[job:ingest_images]\nuses = jobs.ingest_images:ingest_images\n{lines}\n{extra}")
    return folders


def run(project: Project, inbox: Path, *args: str) -> dict[str, Any]:
    done = project.runner("run", "ingest_images", "-p", f"inbox={inbox}", *args, "--json")
    assert done.returncode == 0, done
    return done.json()["result"]


def image_rows(project: Project) -> list[dict[str, Any]]:
    from jobs.ingest_images import images

    engine = sa.create_engine(project.data_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(images).order_by(images.c.id)).mappings().all()
            return [dict(row) for row in rows]
    finally:
        engine.dispose()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.exists() else []


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- an independent reference: Pillow decodes, NumPy measures ------------------------------------


def reference_pixels(path: Path) -> np.ndarray:
    """What the job should measure: oriented, alpha over white, 16-bit scaled to 8 (float)."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
    mode = image.mode
    if mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint32) >> 8).astype(np.float64)
    if mode == "P":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "RGBA"):
        values = np.asarray(image).astype(np.float64)
        colour, alpha = values[..., :-1], values[..., -1:] / 255.0
        flat = colour * alpha + 255.0 * (1 - alpha)
        return flat[..., 0] if mode == "LA" else flat
    if mode not in ("L", "RGB"):
        image = image.convert("L" if mode == "1" else "RGB")
    return np.asarray(image).astype(np.float64)


def reference_stats(pixels: np.ndarray) -> tuple[list[float], list[float], float]:
    planes = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    means = planes.mean(axis=(0, 1)).tolist()
    stds = planes.std(axis=(0, 1)).tolist()
    luma = pixels if pixels.ndim == 2 else pixels @ np.array([0.299, 0.587, 0.114])
    return means, stds, float(luma.mean())


# --- tests -----------------------------------------------------------------------------------------


def test_corpus_good_images_measured_bad_ones_quarantined(project: Project) -> None:
    folders = configure(project, workers=2)
    inbox = folders["inbox"]
    valid = make_valid(inbox)
    bad = make_bad(inbox, MAX_BYTES)
    originals = {path.name: sha256(path) for path in files_under(inbox) if not path.is_symlink()}
    references = {item.name: reference_stats(reference_pixels(inbox / item.name)) for item in valid}
    passwd_before = Path("/etc/passwd").read_bytes()

    result = run(project, inbox)

    assert result["processed"] == len(valid), result
    assert result["quarantined"] == len(bad), result
    assert files_under(inbox) == []
    processed = {path.name: path for path in files_under(folders["processed"])}
    assert set(processed) == {item.name for item in valid}
    rows = {Path(row["processed_path"]).name: row for row in image_rows(project)}
    assert set(rows) == set(processed)
    for item in valid:
        row, path = rows[item.name], processed[item.name]
        assert row["state"] == "done"
        assert Path(row["processed_path"]) == path
        assert path.parent.relative_to(folders["processed"]).as_posix().count("/") == 2  # YYYY/MM/DD
        assert (row["width"], row["height"], row["frames"]) == (item.width, item.height, item.frames), item
        assert row["sha256"] == originals[item.name] == sha256(path)
        assert row["byte_size"] == path.stat().st_size
        means, stds, luma = references[item.name]
        assert row["channel_means"] == pytest.approx(means, abs=0.75), item.name
        assert row["channel_stds"] == pytest.approx(stds, abs=0.75), item.name
        assert row["brightness"]["mean"] == pytest.approx(luma, abs=1.0), item.name
        with Image.open(row["thumbnail_path"]) as thumb:
            assert max(thumb.size) <= THUMB_SIZE and thumb.format == "WEBP"
    assert rows["rotated.jpg"]["captured_at"].strftime("%Y:%m:%d %H:%M:%S") == CAPTURED
    assert rows["rgb.png"]["captured_at"] is None
    assert {rows[name]["mode"] for name in rows} >= {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"}

    quarantined = folders["quarantine"]
    for name, word in bad.items():
        assert (quarantined / name).is_symlink() or (quarantined / name).is_file(), name
        reason = (quarantined / f"{name}.reason.txt").read_text()
        assert reason.count("\n") == 1 and word in reason, (name, reason)
    assert os.readlink(quarantined / "passwd.jpg") == "/etc/passwd"
    assert Path("/etc/passwd").read_bytes() == passwd_before
    kept = {p.name: sha256(p) for p in files_under(folders["processed"]) + files_under(quarantined)}
    assert {name: kept[name] for name in originals} == originals  # nothing lost, nothing changed


def test_exact_duplicate_and_resized_copy(sqlite_project: Project) -> None:
    folders = configure(sqlite_project, workers=1)
    inbox = folders["inbox"]
    original = rgb_image(320, 240, 21)
    original.save(inbox / "a_original.jpg", quality=90)
    shutil.copyfile(inbox / "a_original.jpg", inbox / "b_copy.jpg")
    original.resize((160, 120), Image.Resampling.LANCZOS).save(inbox / "c_small.png")
    ImageOps.mirror(original).save(inbox / "d_mirrored.jpg", quality=90)

    first = run(sqlite_project, inbox)
    shutil.copyfile(folders["processed"].rglob("a_original.jpg").__next__(), inbox / "a_original.jpg")
    second = run(sqlite_project, inbox)

    assert (first["processed"], first["duplicates"], first["near_duplicates"]) == (4, 1, 1), first
    assert (second["processed"], second["duplicates"]) == (1, 1), second
    rows = image_rows(sqlite_project)
    by_name = {}
    for row in rows:
        by_name.setdefault(Path(row["source_path"]).name, []).append(row)
    a = by_name["a_original.jpg"][0]
    assert a["duplicate_of"] is None and a["near_duplicate_of"] is None
    assert by_name["b_copy.jpg"][0]["duplicate_of"] == a["id"]
    assert by_name["a_original.jpg"][1]["duplicate_of"] == a["id"]
    assert Path(by_name["a_original.jpg"][1]["processed_path"]).name == "a_original-1.jpg"  # never overwrite
    small = by_name["c_small.png"][0]
    assert small["duplicate_of"] is None
    assert small["near_duplicate_of"] == a["id"] and small["near_distance"] <= 6
    assert by_name["d_mirrored.jpg"][0]["near_duplicate_of"] is None
    assert len(rows) == len(files_under(folders["processed"])) == 5


def test_a_watch_job_run_by_hand_takes_its_files_through_ctx_files(sqlite_project: Project) -> None:
    folders = configure(sqlite_project, workers=2)
    inbox = folders["inbox"]
    configure(sqlite_project, workers=2, inbox=inbox, extra=f"watch = {inbox}\npatterns = *.png")
    for seed in range(4):
        rgb_image(50, 40, seed).save(inbox / f"w{seed}.png")

    done = sqlite_project.runner("run", "ingest_images", "--json")

    assert done.returncode == 0, done
    assert done.json()["result"]["processed"] == 4
    assert files_under(inbox) == []
    assert len(image_rows(sqlite_project)) == 4


def test_a_watch_section_without_inbox_ingests_its_watched_folder(sqlite_project: Project) -> None:
    """The README's [job:ingest]: `watch = FOLDER` and no `inbox`. The job reads the watched folder,
    writes processed/quarantine/thumbs beside it and nowhere else, and refuses another inbox."""
    conf = sqlite_project.config_path.parent
    inbox = conf / "uploads"
    inbox.mkdir(parents=True)
    sqlite_project.configure(
        "[job:ingest]\nuses = jobs.ingest_images:ingest_images\nwatch = uploads\nworkers = 1"
    )
    for seed in range(2):
        rgb_image(50, 40, seed).save(inbox / f"w{seed}.png")

    done = sqlite_project.runner("run", "ingest", "--json")
    other = sqlite_project.runner("run", "ingest", "-p", f"inbox={sqlite_project.root}")
    sqlite_project.configure(
        "[job:ingest]\nuses = jobs.ingest_images:ingest_images\nwatch = uploads\ninbox = elsewhere"
    )
    checked = sqlite_project.runner("check")

    assert done.returncode == 0, done
    assert done.json()["result"]["processed"] == 2
    assert files_under(inbox) == []
    assert len(files_under(conf / "processed")) == 2
    assert sorted(p.name for p in conf.iterdir()) == [
        "processed",
        "quarantine",
        "runner.ini",
        "thumbs",
        "uploads",
        "var",
    ]
    assert sorted(p.name for p in sqlite_project.root.iterdir()) == ["conf"], (
        "nothing beside the working directory"
    )
    assert other.returncode == 2 and "reads its watched folder" in other.stderr, other
    assert checked.returncode == 2 and "[job:ingest] inbox = 'elsewhere'" in checked.stderr, checked


def test_kill_9_at_random_points_then_rerun_keeps_every_file_once(sqlite_project: Project) -> None:
    folders = configure(sqlite_project, workers=1, extra="overlap = allow")
    inbox = folders["inbox"]
    seed = int(os.environ.get("INGEST_KILL_SEED", time.time()))  # set it to replay a failure
    rng = random.Random(seed)
    for index in range(54):
        rgb_image(1200 + index, 800, 100 + index).save(inbox / f"img{index:02d}.jpg", quality=85)
    shutil.copyfile(inbox / "img00.jpg", inbox / "img00_again.jpg")
    make_bad(inbox / "bad", MAX_BYTES)
    for path in (inbox / "bad").iterdir():
        os.rename(path, inbox / path.name)
    (inbox / "bad").rmdir()
    originals = sorted(sha256(p) for p in files_under(inbox) if not p.is_symlink())
    names = sorted(p.name for p in files_under(inbox))

    left = []
    for _ in range(KILL_ROUNDS):
        before = len(files_under(inbox))
        process = sqlite_project.start("run", "ingest_images", "-p", f"inbox={inbox}")
        # Kill after a random number of files, at a random instant within the next file's work:
        # every round lands mid-batch whatever the machine's speed.
        moved = rng.randint(1, 8)
        wait_until(
            lambda target=before - moved: len(files_under(inbox)) <= target, f"the run to move {moved} files"
        )
        time.sleep(rng.uniform(0.0, 0.03))
        process.kill()
        process.communicate(timeout=COMMAND_TIMEOUT_S)
        wait_until(lambda: not job_processes(sqlite_project), "the killed run's job process to be gone")
        left.append(len(files_under(inbox)))
    final = run(sqlite_project, inbox)

    print(f"seed {seed}: files left in the inbox after each kill: {left}, then {final}")
    assert left[-1] > 0, (seed, left)  # every kill landed mid-batch
    assert files_under(inbox) == []
    assert_each_file_once(folders, names)
    kept = files_under(folders["processed"]) + files_under(folders["quarantine"])
    assert (
        sorted(sha256(p) for p in kept if not p.is_symlink() and not p.name.endswith(".reason.txt"))
        == originals
    )
    rows = image_rows(sqlite_project)
    processed = files_under(folders["processed"])
    assert sorted(row["processed_path"] for row in rows) == sorted(str(p) for p in processed)
    assert {row["state"] for row in rows} == {"done"}
    assert all(sha256(Path(row["processed_path"])) == row["sha256"] for row in rows)


def test_rerun_finishes_each_interrupted_step(sqlite_project: Project) -> None:
    """The crash states a kill can leave, made by hand: a row reserved but the file not moved, a file
    under both names, a quarantine reason written but the file not moved, a half-done quarantine."""
    from jobs.ingest_images import images

    folders = configure(sqlite_project, workers=1)
    inbox, processed, quarantined = folders["inbox"], folders["processed"], folders["quarantine"]
    rgb_image(60, 40, 31).save(inbox / "x.png")
    run(sqlite_project, inbox)
    template = image_rows(sqlite_project)[0]
    day = Path(template["processed_path"]).parent
    engine = sa.create_engine(sqlite_project.data_url)

    def reserve(name: str, seed: int) -> Path:
        rgb_image(60, 40, seed).save(inbox / name)
        info = (inbox / name).stat()
        row = {k: v for k, v in template.items() if k != "id"}
        row |= {"state": "moving", "source_path": str(inbox / name), "processed_path": str(day / name)}
        row |= {
            "source_size": info.st_size,
            "source_mtime_ns": info.st_mtime_ns,
            "sha256": sha256(inbox / name),
        }
        with engine.begin() as conn:
            conn.execute(sa.insert(images).values(**row))
        return day / name

    reserve("not_moved.png", 32)
    both = reserve("both.png", 33)
    os.link(inbox / "both.png", both)
    renewed = reserve("renewed.png", 34)  # moved, not yet 'done'; then a new file took the name
    os.rename(inbox / "renewed.png", renewed)
    rgb_image(60, 40, 35).save(inbox / "renewed.png")
    (inbox / "text.jpg").write_text("not an image")
    (quarantined / "text.jpg.reason.txt").write_text("stale reason from a crashed run\n")
    (inbox / "linked.jpg").write_text("also not an image")
    os.link(inbox / "linked.jpg", quarantined / "linked.jpg")
    engine.dispose()

    result = run(sqlite_project, inbox)

    assert result["recovered"] == 2 and result["processed"] == 1, result
    assert files_under(inbox) == []
    names = ["both.png", "not_moved.png", "renewed-1.png", "renewed.png", "x.png"]
    assert sorted(p.name for p in files_under(processed)) == names
    rows = image_rows(sqlite_project)
    assert sorted(Path(r["processed_path"]).name for r in rows) == names
    assert {r["state"] for r in rows} == {"done"}
    assert sorted(p.name for p in files_under(quarantined)) == [
        "linked.jpg",
        "text.jpg",
        "text.jpg.reason.txt",
    ]
    assert "not a" in (quarantined / "text.jpg.reason.txt").read_text()


def test_a_worker_killed_mid_batch_costs_nothing(sqlite_project: Project) -> None:
    """A decoder process that dies (a crash in native code, the OOM killer) is replaced; the file it
    held is retried alone and the batch goes on."""
    folders = configure(sqlite_project, workers=2)
    inbox = folders["inbox"]
    for index in range(30):
        rgb_image(1200 + index, 800, 200 + index).save(inbox / f"img{index:02d}.jpg", quality=85)

    process = sqlite_project.start("run", "ingest_images", "-p", f"inbox={inbox}", "--json")
    wait_until(lambda: len(files_under(inbox)) <= 27, "the run to move 3 files")
    workers = wait_until(lambda: pool_workers(sqlite_project), "the pool's workers")
    os.kill(workers[0], signal.SIGKILL)
    done = sqlite_project.finish(process)

    assert done.returncode == 0, done
    result = done.json()["result"]
    assert (result["processed"], result["quarantined"]) == (30, 0), result
    assert files_under(inbox) == []
    assert len(image_rows(sqlite_project)) == 30
    log = sqlite_project.runner("logs", str(done.json()["run_id"])).stdout
    assert "a decoding process died; retrying" in log, log


def pool_workers(project: Project) -> list[int]:
    """The job's decoding processes: runner -> group leader -> job process -> workers."""
    ours = set(job_processes(project))
    parent = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in ours}

    def depth(pid: int) -> int:
        return 1 + depth(parent[pid]) if parent.get(pid) in ours else 0

    return sorted(pid for pid in ours if depth(pid) >= 3)


def job_processes(project: Project) -> list[int]:
    marker = str(project.config_path)
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and marker in command_line(int(entry.name)):
            stat = (entry / "stat").read_text() if (entry / "stat").exists() else ""
            if stat and stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def assert_each_file_once(folders: dict[str, Path], names: list[str]) -> None:
    """Each input name is in exactly one of inbox / processed / quarantine (reason files and the
    job's own hidden temp files aside)."""
    found = []
    for key in ("inbox", "processed", "quarantine"):
        found += [
            p.name
            for p in files_under(folders[key])
            if not p.name.endswith(".reason.txt") and not p.name.startswith(".")
        ]
    assert sorted(found) == names


def test_importing_the_job_module_skips_pillow_and_numpy() -> None:
    probe = "import sys, jobs.ingest_images; print(sorted({'PIL', 'numpy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- classes of valid input measured truthfully (issue 14) ----------------------------------------


def with_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """`png` with one more chunk right after IHDR (written by hand: Pillow's writer varies)."""
    import struct
    import zlib

    at = 8 + 8 + 13 + 4  # signature, IHDR's length and type, its 13 bytes, its CRC
    chunk = struct.pack(">I", len(payload)) + kind + payload
    chunk += struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    return png[:at] + chunk + png[at:]


def expected_figures(pixels: np.ndarray) -> dict[str, Any]:
    """Means, stds, brightness mean and median of a float picture as a viewer shows it (0-255)."""
    means, stds, luma_mean = reference_stats(pixels)
    luma = pixels if pixels.ndim == 2 else pixels @ np.array([0.299, 0.587, 0.114])
    return {"means": means, "stds": stds, "luma": luma_mean, "median": float(np.median(luma))}


def assert_measured_as(row: dict[str, Any], expected: dict[str, Any], name: str) -> None:
    assert row["channel_means"] == pytest.approx(expected["means"], abs=0.75), name
    assert row["channel_stds"] == pytest.approx(expected["stds"], abs=0.75), name
    assert row["brightness"]["mean"] == pytest.approx(expected["luma"], abs=1.0), name
    assert abs(row["brightness"]["p50"] - expected["median"]) <= 2, name
    assert row["dhash"] != 0, name  # a picture, not a black or white square
    with Image.open(row["thumbnail_path"]) as thumb:
        shown = np.asarray(thumb.convert("L")).astype(np.float64).mean()
    assert shown == pytest.approx(expected["luma"], abs=4.0), name  # the thumbnail is the picture too


def test_sixteen_bit_images_that_use_only_the_low_bits_are_scaled_by_their_range(
    sqlite_project: Project,
) -> None:
    folders = configure(sqlite_project, workers=1)
    inbox = folders["inbox"]
    grey = np.asarray(rgb_image(96, 64, 41).convert("L")).astype(np.uint16)
    fine = np.random.default_rng(41).integers(0, 16, grey.shape).astype(np.uint16)
    twelve = grey * 16 + fine  # a 12-bit scan: 0..4095 in 16-bit samples
    Image.fromarray(twelve).save(inbox / "scan12.tif", "TIFF")
    Image.fromarray(grey).save(inbox / "eight_in_16.png", "PNG")  # 8-bit values in a 16-bit file
    dim = (grey * 6 + fine).astype(np.uint16)  # declared 12-bit (sBIT), its brightest sample < 2048
    plain = inbox / "dim12.png"
    Image.fromarray(dim).save(plain, "PNG")
    plain.write_bytes(with_chunk(plain.read_bytes(), b"sBIT", bytes([12])))
    expected = {
        "scan12.tif": expected_figures((twelve // 16).astype(np.float64)),
        "eight_in_16.png": expected_figures(grey.astype(np.float64)),
        "dim12.png": expected_figures((dim // 16).astype(np.float64)),
    }

    result = run(sqlite_project, inbox)

    assert result["processed"] == 3, result
    rows = {Path(row["source_path"]).name: row for row in image_rows(sqlite_project)}
    for name, figures in expected.items():
        assert rows[name]["mode"].startswith("I"), rows[name]["mode"]
        assert_measured_as(rows[name], figures, name)


def test_an_alpha_channel_that_carries_nothing_is_ignored(sqlite_project: Project) -> None:
    folders = configure(sqlite_project, workers=1)
    inbox = folders["inbox"]
    picture = pattern(96, 64, 42)
    clear = np.dstack([picture, np.zeros(picture.shape[:2], np.uint8)])  # alpha 0 over a picture
    Image.fromarray(clear, "RGBA").save(inbox / "alpha_zero.png")
    grey = np.asarray(Image.fromarray(picture).convert("L"))
    half = np.dstack([grey, np.full(grey.shape, 128, np.uint8)])  # one alpha value everywhere
    Image.fromarray(half, "LA").save(inbox / "alpha_constant.png")

    result = run(sqlite_project, inbox)

    assert result["processed"] == 2, result
    rows = {Path(row["source_path"]).name: row for row in image_rows(sqlite_project)}
    assert rows["alpha_zero.png"]["mode"] == "RGBA"
    assert_measured_as(rows["alpha_zero.png"], expected_figures(picture.astype(np.float64)), "alpha_zero")
    assert_measured_as(rows["alpha_constant.png"], expected_figures(grey.astype(np.float64)), "constant")


def test_flat_tiny_and_featureless_images_are_not_near_duplicates_of_each_other(project: Project) -> None:
    folders = configure(project, workers=1)
    inbox = folders["inbox"]
    flat = {"a_dot.png": (200, 30, 60), "c_white.png": (250, 250, 250)}
    Image.new("RGB", (1, 1), flat["a_dot.png"]).save(inbox / "a_dot.png")
    Image.new("L", (64, 64), 90).save(inbox / "b_grey.png")
    Image.new("RGB", (64, 64), flat["c_white.png"]).save(inbox / "c_white.png")
    picture = pattern(64, 64, 43)
    Image.fromarray(picture).save(inbox / "d_picture.png")

    result = run(project, inbox)

    assert (result["processed"], result["near_duplicates"]) == (4, 0), result
    rows = {Path(row["source_path"]).name: row for row in image_rows(project)}
    for name in ("a_dot.png", "b_grey.png", "c_white.png"):
        row = rows[name]
        assert row["near_duplicate_of"] is None and row["duplicate_of"] is None, (name, row)
        assert row["dhash"] == 0 and "0 of 64 bits set" in row["near_unlinked"], (name, row)
        expected = [90.0] if name == "b_grey.png" else [float(v) for v in flat[name]]
        assert row["channel_means"] == expected and row["channel_stds"] == [0.0] * len(expected), row
    assert rows["d_picture.png"]["near_unlinked"] is None
    assert_measured_as(rows["d_picture.png"], expected_figures(picture.astype(np.float64)), "picture")


def test_near_duplicate_search_needs_no_numpy_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyproject allows numpy>=1.26, which has no np.bitwise_count: the search must not need it
    (CI also runs this file on the lowest supported NumPy and Pillow, see .ci/run)."""
    from jobs.ingest_images import NearIndex

    monkeypatch.delattr(np, "bitwise_count", raising=False)
    rng = random.Random(44)
    stored = [(row_id, rng.getrandbits(64) - (1 << 63)) for row_id in range(1, 40)]
    index = NearIndex(stored)
    probe = stored[17][1] ^ 0b1011  # three bits away from row 18
    assert index.nearest(probe, 6) == (18, 3)
    assert index.nearest(probe, 2) is None
    expected = min((bin((probe ^ value) & (2**64 - 1)).count("1"), row_id) for row_id, value in stored)
    assert index.nearest(probe, 64) == (expected[1], expected[0])
    grown = NearIndex([])  # a long batch: added hashes move into the NumPy array as they pile up
    for row_id, value in stored * 10:
        grown.add(row_id, value)
    assert grown.nearest(probe, 6) == (18, 3)


# --- refusals that name their cause (issue 14) ----------------------------------------------------


def test_refusals_name_the_format_or_the_variant_and_a_dib_is_taken(sqlite_project: Project) -> None:
    import struct

    folders = configure(sqlite_project, workers=1)
    inbox, quarantined = folders["inbox"], folders["quarantine"]
    picture = pattern(48, 32, 45)
    Image.fromarray(picture).save(inbox / "scan.ppm", "PPM")
    Image.fromarray(picture).save(inbox / "icon.ico", "ICO", sizes=[(32, 32)])
    Image.fromarray(picture).save(inbox / "clipboard.dib", "DIB")  # a BMP without its file header
    bmp = inbox / "jpeg_inside.bmp"
    Image.fromarray(picture).save(bmp, "BMP")
    data = bytearray(bmp.read_bytes())
    data[30:34] = struct.pack("<I", 4)  # biCompression = BI_JPEG: well-formed, Pillow has no decoder
    bmp.write_bytes(bytes(data))

    first = run(sqlite_project, inbox)

    assert (first["processed"], first["quarantined"]) == (1, 3), first
    reasons = {p.name[: -len(".reason.txt")]: p.read_text() for p in quarantined.glob("*.reason.txt")}
    assert reasons["scan.ppm"].startswith(
        "its content is a PPM image; accepted: JPEG, PNG, WEBP, GIF, TIFF, BMP"
    )
    assert "add PPM to `formats`" in reasons["scan.ppm"]
    assert reasons["icon.ico"].startswith("its content is an ICO image; accepted:")
    assert "Pillow cannot decode this variant of BMP" in reasons["jpeg_inside.bmp"]
    assert "compression" in reasons["jpeg_inside.bmp"] and "damaged" not in reasons["jpeg_inside.bmp"]
    (row,) = image_rows(sqlite_project)
    assert (Path(row["source_path"]).name, row["format"]) == ("clipboard.dib", "DIB")
    assert_measured_as(row, expected_figures(picture.astype(np.float64)), "clipboard.dib")

    configure(sqlite_project, workers=1, formats="jpeg, png, ppm")
    shutil.copyfile(quarantined / "scan.ppm", inbox / "scan.ppm")
    shutil.copyfile(quarantined / "icon.ico", inbox / "icon.ico")
    second = run(sqlite_project, inbox)

    assert (second["processed"], second["quarantined"]) == (1, 1), second
    ppm = next(r for r in image_rows(sqlite_project) if r["format"] == "PPM")
    assert_measured_as(ppm, expected_figures(picture.astype(np.float64)), "scan.ppm")
    assert "accepted: JPEG, PNG, PPM; add ICO" in (quarantined / "icon-1.ico.reason.txt").read_text()

    configure(sqlite_project, workers=1, formats="png, eps, nope")
    refused = sqlite_project.runner("run", "ingest_images", "-p", f"inbox={inbox}")
    assert refused.returncode == 1 and "formats = png, eps, nope: unknown: NOPE" in refused.stderr, refused


# --- a time limit per file, and for every shipped job (issue 14) ----------------------------------


def test_a_file_whose_decode_outlasts_file_timeout_is_quarantined_and_its_worker_replaced(
    sqlite_project: Project,
) -> None:
    from jobs._imaging import TEST_STALL_ENV

    folders = configure(sqlite_project, workers=1, file_timeout=5)
    inbox = folders["inbox"]
    for index in range(4):
        rgb_image(64, 48, 50 + index).save(inbox / f"img{index}.png")
    rgb_image(64, 48, 60).save(inbox / "img1_stuck.png")  # third in the batch: files follow it
    sqlite_project.environ[TEST_STALL_ENV] = "img1_stuck.png"  # its decode hangs (a test-only hook)

    done = sqlite_project.runner("run", "ingest_images", "-p", f"inbox={inbox}", "--json")

    assert done.returncode == 0, done
    result = done.json()["result"]
    assert (result["processed"], result["quarantined"]) == (4, 1), result
    reason = (folders["quarantine"] / "img1_stuck.png.reason.txt").read_text()
    assert "took longer than file_timeout = 5s" in reason, reason
    assert sorted(Path(r["source_path"]).name for r in image_rows(sqlite_project)) == [
        f"img{index}.png" for index in range(4)
    ]
    log = sqlite_project.runner("logs", str(done.json()["run_id"])).stdout
    assert "img1_stuck.png took longer than file_timeout = 5s; replacing the decoding processes" in log
    assert not [pid for pid in job_processes(sqlite_project)], "no decoding process outlives the run"


def test_every_shipped_job_has_a_default_timeout(sqlite_project: Project) -> None:
    sqlite_project.configure(
        "[job:ingest_images]\nuses = jobs.ingest_images:ingest_images\ninbox = in\n\n"
        "[job:hello]\nuses = jobs.hello:hello\n"
    )
    for name, expected in (("ingest_images", "1h"), ("hello", "1m")):
        shown = sqlite_project.runner("show", name, "--json")
        assert shown.returncode == 0, shown
        assert shown.json()["settings"]["timeout"] == expected, shown.json()


# --- clean run logs (issue 14) ----------------------------------------------------------------------


def damaged_tiff(path: Path, compression: str) -> None:
    """A TIFF whose compressed strip is garbled: libtiff, which decodes it, prints to stderr."""
    buffer = io.BytesIO()
    rgb_image(200, 150, 46).save(buffer, "TIFF", compression=compression)
    data = bytearray(buffer.getvalue())
    for at in range(200, 2000, 7):
        data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def jpeg_with_a_broken_exif_offset(path: Path) -> None:
    """A good picture whose EXIF Software tag points past the end: Pillow warns while reading it."""
    import struct

    exif = Image.Exif()
    exif[305] = "a camera that writes a long name"
    raw = bytearray(exif.tobytes())
    tiff_at = raw.index(b"Exif\x00\x00") + 6
    order = "<" if raw[tiff_at : tiff_at + 2] == b"II" else ">"
    ifd_at = tiff_at + struct.unpack(order + "I", raw[tiff_at + 4 : tiff_at + 8])[0]
    for entry in range(struct.unpack(order + "H", raw[ifd_at : ifd_at + 2])[0]):
        at = ifd_at + 2 + 12 * entry
        if struct.unpack(order + "H", raw[at : at + 2])[0] == 305:
            raw[at + 8 : at + 12] = struct.pack(order + "I", 60_000)
    rgb_image(64, 48, 47).save(path, "JPEG", quality=90, exif=bytes(raw))


def test_library_messages_and_warnings_reach_the_run_log_as_prefixed_lines(sqlite_project: Project) -> None:
    folders = configure(sqlite_project, workers=2)
    inbox = folders["inbox"]
    run(sqlite_project, inbox)  # the databases' first migrations (the runner's lines) happen here
    damaged_tiff(inbox / "lzw.tif", "tiff_lzw")
    damaged_tiff(inbox / "deflate.tif", "tiff_adobe_deflate")
    jpeg_with_a_broken_exif_offset(inbox / "exif.jpg")
    rgb_image(64, 48, 48).save(inbox / "fine.png")

    done = sqlite_project.runner("run", "ingest_images", "-p", f"inbox={inbox}", "--json")

    assert done.returncode == 0, done
    result, run_id = done.json()["result"], done.json()["run_id"]
    assert (result["processed"], result["quarantined"]) == (2, 2), result
    log = sqlite_project.runner("logs", str(run_id)).stdout
    record = re.compile(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} run={run_id} job=ingest_images [A-Z]+ \S+: "
    )
    lines = [line for line in log.splitlines() if line.strip()]
    supervisor = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d runner: run ")  # its first and last line
    job_lines = [line for line in lines if not supervisor.match(line)]
    assert len(job_lines) == len(lines) - 2, log
    assert [line for line in job_lines if not record.match(line)] == [], log
    library = [line for line in job_lines if "jobs.ingest_images.stderr: " in line]
    assert any("Decod" in line or "table" in line for line in library), log  # libtiff's own words
    assert any("UserWarning: Truncated File Read" in line and "py.warnings" in line for line in job_lines), (
        log
    )


# --- files sent again (issue 14) -------------------------------------------------------------------


def test_a_bad_file_sent_again_says_so_and_duplicates_are_counted_in_one_query(project: Project) -> None:
    folders = configure(project, workers=1)
    inbox, quarantine = folders["inbox"], folders["quarantine"]
    (inbox / "notes.jpg").write_text("meeting notes, not a picture\n" * 20)
    whole = io.BytesIO()
    rgb_image(200, 150, 49).save(whole, "JPEG", quality=90)
    (inbox / "cut.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    rgb_image(64, 48, 49).save(inbox / "good.png")
    sent = {name: (inbox / name).read_bytes() for name in ("notes.jpg", "cut.jpg", "good.png")}
    first = run(project, inbox)
    (inbox / "notes.jpg").write_bytes(sent["notes.jpg"])  # the same name and content again
    (inbox / "cut_again.jpg").write_bytes(sent["cut.jpg"])  # the same content, another name
    (inbox / "good.png").write_bytes(sent["good.png"])
    (inbox / "good_copy.png").write_bytes(sent["good.png"])

    second = run(project, inbox)

    assert (first["quarantined"], second["quarantined"], second["duplicates"]) == (2, 2, 2), second
    first_note = (quarantine / "notes.jpg.reason.txt").read_text()
    assert "same content" not in first_note
    again = (quarantine / "notes-1.jpg.reason.txt").read_text()
    assert again.startswith(first_note.strip()) and "it is the same content as notes.jpg" in again, again
    assert "it is the same content as cut.jpg" in (quarantine / "cut_again.jpg.reason.txt").read_text()
    engine = sa.create_engine(project.data_url)
    try:
        with engine.connect() as conn:
            duplicates = conn.execute(sa.text("SELECT count(*) FROM images WHERE duplicate_of IS NOT NULL"))
            resent = conn.execute(sa.text("SELECT count(*) FROM quarantined WHERE same_as IS NOT NULL"))
            assert (duplicates.scalar(), resent.scalar()) == (2, 2)
            rows = conn.execute(sa.text("SELECT quarantine_path, sha256 FROM quarantined ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [(Path(path).name, sha) for path, sha in rows] == [
        ("cut.jpg", hashlib.sha256(sent["cut.jpg"]).hexdigest()),
        ("notes.jpg", hashlib.sha256(sent["notes.jpg"]).hexdigest()),
        ("cut_again.jpg", hashlib.sha256(sent["cut.jpg"]).hexdigest()),
        ("notes-1.jpg", hashlib.sha256(sent["notes.jpg"]).hexdigest()),
    ]
