"""Benchmark: `runner run ingest_images` against a plain Pillow + NumPy loop on the same photos.

    .venv/bin/python bench/ingest.py                 # 300 photos, 0.3-12 MP
    .venv/bin/python bench/ingest.py --count 60      # quicker
    .venv/bin/python bench/ingest.py --json

Both sides get a fresh copy of the same JPEGs (generated once, cached in --cache). The plain loop
decodes each photo, applies EXIF orientation, computes the same NumPy statistics (per-channel mean
and standard deviation, brightness histogram summary, dHash) and writes the same WebP thumbnail; no
database, no checks, no moves. The job does all of that plus its checks (size, verify(), reopen,
SHA-256), a row per image and an fsync'ed move, with workers=1 then workers=2. Each side is a fresh
process, timed from start to exit; every process's peak RSS (VmHWM) is sampled from /proc.
Targets: job >= 0.9x the plain loop with one worker, >= 1.7x with two (issue 14).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER_BIN = Path(sys.executable).parent / "runner"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "runner-bench-ingest-photos"
THUMB_SIZE = 256
TARGET_ONE_WORKER = 0.9
TARGET_TWO_WORKERS = 1.7
SAMPLE_EVERY_S = 0.1


def plain_loop(src: Path, out: Path) -> int:
    """The baseline a team would write: Pillow decode, NumPy stats, thumbnail. Returns images done."""
    import numpy as np
    from PIL import Image, ImageOps

    values = np.arange(256, dtype=np.float64)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in sorted(src.iterdir()):
        with Image.open(path) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            pixels = np.asarray(rgb)
            stats = []
            for channel in range(3):
                counts = np.bincount(pixels[..., channel].ravel(), minlength=256).astype(np.float64)
                mean = counts @ values / counts.sum()
                stats.append((mean, (counts @ (values - mean) ** 2 / counts.sum()) ** 0.5))
            luma = rgb.convert("L")
            counts = np.bincount(np.asarray(luma).ravel(), minlength=256).astype(np.float64)
            cumulative = np.cumsum(counts) / counts.sum()
            summary = [int(np.searchsorted(cumulative, q)) for q in (0.05, 0.5, 0.95)]
            summary.append(counts.reshape(16, 16).sum(axis=1).tolist())
            small = np.asarray(luma.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
            dhash = int.from_bytes(np.packbits((small[:, 1:] > small[:, :-1]).ravel()).tobytes(), "big")
            rgb.thumbnail((THUMB_SIZE, THUMB_SIZE))
            rgb.save(out / f"{path.stem}.webp", "WEBP", quality=80, method=0)
            results.append((path.name, stats, summary, dhash))
    return len(results)


class PeakRss:
    """Samples VmHWM (peak resident set) of a process and all its descendants, per pid."""

    def __init__(self, root_pid: int) -> None:
        self.root = root_pid
        self.peak_kb: dict[int, int] = {}
        self.parent: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_EVERY_S)

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        todo = [self.root]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                self.parent.setdefault(child, pid)
                todo.append(child)
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), int(line.split()[1]))
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def by_depth(self) -> dict[int, list[int]]:
        """Peak RSS in MiB grouped by depth below the root (0 = the process we started)."""
        depths: dict[int, list[int]] = {}
        for pid, kb in self.peak_kb.items():
            depth, at = 0, pid
            while at != self.root and at in self.parent:
                at, depth = self.parent[at], depth + 1
            depths.setdefault(depth, []).append(round(kb / 1024))
        return {depth: sorted(values, reverse=True) for depth, values in sorted(depths.items())}


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, PeakRss, str]:
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    rss = PeakRss(process.pid)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    rss.stop()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {process.returncode}:\n{stdout}\n{stderr}")
    return seconds, rss, stdout


def fresh_copy(photos: list[Path], inbox: Path) -> None:
    if inbox.parent.exists():
        shutil.rmtree(inbox.parent)
    inbox.mkdir(parents=True)
    for path in photos:
        shutil.copyfile(path, inbox / path.name)
    os.sync()  # the copy's dirty pages must not be flushed by the first fsync inside a timed run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="photos (default 300)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where generated photos are kept")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plain-loop", nargs=2, type=Path, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        print(plain_loop(*args.plain_loop))
        return 0

    sys.path.insert(0, str(ROOT / "tests"))
    from imagecorpus import make_photos

    started = time.perf_counter()
    photos = make_photos(args.cache / "photos", args.count)
    megapixels = sum(_megapixels(p) for p in photos)
    if not args.json:
        print(
            f"{len(photos)} photos, {megapixels:.0f} MP in all, ready in {time.perf_counter() - started:.0f}s"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PYTHON"))}
    work = Path(tempfile.mkdtemp(prefix="runner-bench-ingest-"))
    config = work / "conf" / "runner.ini"
    config.parent.mkdir(parents=True)
    config.write_text(
        "[runner]\nvar_dir = var\njob_packages = jobs\n\n[job:ingest_images]\n"
        f"inbox = ../data/inbox\nthumb_size = {THUMB_SIZE}\nthumb_format = webp\n"
    )
    inbox = work / "data" / "inbox"
    figures: dict[str, dict] = {}
    try:
        # The schema is created once, untimed: a deployed runner has its database already.
        timed([str(RUNNER_BIN), "--config", str(config), "db", "upgrade"], env, work)
        fresh_copy(photos, inbox)
        seconds, rss, out = timed(
            [sys.executable, __file__, "--plain-loop", str(inbox), str(work / "data" / "thumbs")], env, work
        )
        assert int(out.strip()) == len(photos), out
        figures["plain loop"] = _figures(len(photos), seconds, rss, workers_depth=0)
        figures["2 plain loops"] = _two_plain_loops(photos, inbox, work / "data" / "thumbs", env, work)
        for workers in (1, 2):
            fresh_copy(photos, inbox)
            argv = [str(RUNNER_BIN), "--config", str(config), "run", "ingest_images"]
            argv += ["-p", f"inbox={inbox}", "-p", f"workers={workers}", "--json"]
            seconds, rss, out = timed(argv, env, work)
            result = json.loads(out)["result"]
            assert result["processed"] == len(photos), result
            # runner (0) -> group leader (1) -> job process (2) -> decoding processes (3)
            figures[f"job, {workers} worker{'s' if workers > 1 else ''}"] = _figures(
                len(photos), seconds, rss, workers_depth=3
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = figures["plain loop"]["images_per_s"]
    for row in figures.values():
        row["ratio"] = round(row["images_per_s"] / base, 3)
    one, two = figures["job, 1 worker"]["ratio"], figures["job, 2 workers"]["ratio"]
    passed = one >= TARGET_ONE_WORKER and two >= TARGET_TWO_WORKERS
    if args.json:
        print(
            json.dumps({"photos": len(photos), "megapixels": round(megapixels, 1), **figures, "pass": passed})
        )
    else:
        print(f"{'side':<18} {'seconds':>8} {'images/s':>9} {'ratio':>6}  peak RSS per worker (MiB)")
        for name, row in figures.items():
            rss = (
                f"{row['worker_rss_mib']}  (all processes: {row['rss_by_depth']})"
                if "rss_by_depth" in row
                else ""
            )
            print(
                f"{name:<18} {row['seconds']:>8.1f} {row['images_per_s']:>9.2f} {row['ratio']:>6.2f}  {rss}"
            )
        print(
            f"targets: 1 worker >= {TARGET_ONE_WORKER}x ({one:.2f}x), 2 workers >= {TARGET_TWO_WORKERS}x "
            f"({two:.2f}x): {'PASS' if passed else 'FAIL'}"
        )
    return 0 if passed else 1


def _two_plain_loops(photos: list[Path], inbox: Path, out: Path, env: dict[str, str], cwd: Path) -> dict:
    """What this machine's two CPUs give two independent processes: the ceiling for two workers."""
    fresh_copy(photos, inbox)
    halves = [inbox.with_name(f"half{i}") for i in (0, 1)]
    for index, half in enumerate(halves):
        half.mkdir()
        for path in photos[index::2]:
            os.rename(inbox / path.name, half / path.name)
    started = time.perf_counter()
    argv = [[sys.executable, __file__, "--plain-loop", str(half), str(out)] for half in halves]
    processes = [subprocess.Popen(a, env=env, cwd=cwd, stdout=subprocess.DEVNULL) for a in argv]
    if any(process.wait() != 0 for process in processes):
        raise SystemExit("a plain loop failed")
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "images_per_s": round(len(photos) / seconds, 2)}


def _figures(count: int, seconds: float, rss: PeakRss, workers_depth: int) -> dict:
    depths = rss.by_depth()
    return {
        "seconds": round(seconds, 2),
        "images_per_s": round(count / seconds, 2),
        "worker_rss_mib": depths.get(workers_depth, []),
        "rss_by_depth": depths,
    }


def _megapixels(path: Path) -> float:
    from PIL import Image

    with Image.open(path) as image:
        return image.width * image.height / 1e6


if __name__ == "__main__":
    sys.exit(main())
