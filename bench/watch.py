"""File-event benchmark: close -> job body latency through `runner daemon` vs a raw watchdog handler,
and how fast a 10,000-file burst drains.

Latency: single files arrive at 20/s (each written, then closed; the writer records the close time).
  runner  - `runner daemon`, events mode, settle = 0: the job records when its body receives each file;
  raw     - a watchdog Observer whose handler records `on_closed` times.
Drain: 10,000 small files are written in a burst into a watched folder; a no-op job walks ctx.files();
files/s = 10,000 / (last file processed - first file written).

    .venv/bin/python bench/watch.py                 # 300 single files a side, 10,000-file burst
    .venv/bin/python bench/watch.py -n 100 --burst 2000 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RUNNER = Path(sys.executable).parent / "runner"
TARGET_P99_MS = 50.0
TARGET_DRAIN_PER_S = 1000.0
RATE_PER_S = 20.0

JOBS = """
import time
from runner import JobContext, job


@job
def latency(ctx: JobContext, out: str) -> None:
    entered = time.time()
    with open(out, "a") as handle:
        handle.writelines(f"{p.name} {entered:.6f}\\n" for p in ctx.fire.paths)


@job
def drain(ctx: JobContext, out: str) -> None:
    count = sum(1 for _ in ctx.files())
    with open(out, "a") as handle:
        handle.write(f"{count} {time.time():.6f}\\n")
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def write_files(folder: Path, count: int, rate: float | None, prefix: str) -> dict[str, float]:
    """Write `count` files (at `rate` per second, or as fast as possible); name -> close time."""
    closed = {}
    start = time.monotonic()
    for i in range(count):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        name = f"{prefix}{i:05d}.jpg"
        with open(folder / name, "wb") as handle:
            handle.write(b"x" * 2048)
        closed[name] = time.time()
    return closed


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def daemon_side(work: Path, count: int, burst: int) -> tuple[dict, dict]:
    (work / "benchwatch").mkdir()
    (work / "benchwatch" / "__init__.py").write_text("")
    (work / "benchwatch" / "jobs.py").write_text(JOBS)
    single, many = work / "single", work / "burst"
    single.mkdir()
    many.mkdir()
    latency_out, drain_out = work / "latency.txt", work / "drain.txt"
    config = work / "runner.ini"
    config.write_text(
        "\n".join(
            [
                "[runner]",
                "var_dir = var",
                "job_packages = benchwatch",
                "max_workers = 4",
                "[job:latency]",
                "uses = benchwatch.jobs:latency",
                f"watch = {single}",
                "settle = 0",
                f"out = {latency_out}",
                "[job:drain]",
                "uses = benchwatch.jobs:drain",
                f"watch = {many}",
                "settle = 0",
                "batch = 500",
                f"out = {drain_out}",
                "",
            ]
        )
    )
    env = {**os.environ, "PYTHONPATH": str(work)}
    subprocess.run([RUNNER, "--config", config, "db", "upgrade"], env=env, check=True, capture_output=True)
    daemon = subprocess.Popen([RUNNER, "--config", config, "daemon"], env=env, stderr=subprocess.DEVNULL)
    db = work / "var" / "runner.db"
    try:
        if not wait_for(lambda: _daemon_up(db), 60):
            raise SystemExit("runner daemon did not start")
        closed = write_files(single, count, RATE_PER_S, "s")
        wait_for(lambda: latency_out.exists() and len(latency_out.read_text().splitlines()) >= count, 60)
        received = dict(line.split() for line in latency_out.read_text().splitlines())
        lateness = [(float(received[n]) - t) * 1000 for n, t in closed.items() if n in received]
        single_result = summarise("runner daemon", lateness, count)

        first_written = time.time()
        write_files(many, burst, None, "b")
        written = time.time()
        done = wait_for(lambda: _drained(drain_out) >= burst, 600)
        last = max((float(line.split()[1]) for line in drain_out.read_text().splitlines()), default=math.nan)
        processed = _drained(drain_out)
        runs = sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs WHERE job = 'drain'").fetchone()[0]
        drain_result = {
            "files": burst,
            "processed": processed,
            "complete": done,
            "write_s": round(written - first_written, 3),
            "drain_s": round(last - first_written, 3),
            "files_per_s": round(processed / (last - first_written), 1) if processed else 0.0,
            "runs": runs,
        }
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    return single_result, drain_result


def _daemon_up(db: Path) -> bool:
    try:
        return bool(
            sqlite3.connect(db).execute("SELECT COUNT(*) FROM daemons WHERE stopped_at IS NULL").fetchone()[0]
        )
    except sqlite3.Error:
        return False


def _drained(out: Path) -> int:
    if not out.exists():
        return 0
    return sum(int(line.split()[0]) for line in out.read_text().splitlines() if line.strip())


def raw_side(work: Path, count: int) -> dict:
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    folder = work / "raw"
    folder.mkdir()
    seen: dict[str, float] = {}
    lock = threading.Lock()

    class Handler(FileSystemEventHandler):
        def on_closed(self, event) -> None:  # type: ignore[no-untyped-def]
            now = time.time()
            with lock:
                seen.setdefault(os.path.basename(os.fsdecode(event.src_path)), now)

    observer = Observer()
    observer.schedule(Handler(), str(folder))
    observer.start()
    try:
        closed = write_files(folder, count, RATE_PER_S, "r")
        wait_for(lambda: len(seen) >= count, 30)
    finally:
        observer.stop()
        observer.join()
    lateness = [(seen[n] - t) * 1000 for n, t in closed.items() if n in seen]
    return summarise("raw watchdog", lateness, count)


def summarise(side: str, lateness_ms: list[float], expected: int) -> dict:
    return {
        "side": side,
        "files": expected,
        "received": len(lateness_ms),
        "p50_ms": round(percentile(lateness_ms, 50), 2),
        "p99_ms": round(percentile(lateness_ms, 99), 2),
        "max_ms": round(max(lateness_ms, default=math.nan), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-n", "--files", type=int, default=300, help="single files a side, at 20/s (default 300)"
    )
    parser.add_argument("--burst", type=int, default=10_000, help="files in the burst (default 10000)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runner-bench-watch-") as tmp:
        work = Path(tmp)
        ours, drain = daemon_side(work, args.files, args.burst)
        raw = raw_side(work, args.files)
    ratio = ours["p99_ms"] / raw["p99_ms"] if raw["p99_ms"] else math.inf
    passed = (
        ours["p99_ms"] <= TARGET_P99_MS
        and ours["received"] == args.files
        and drain["complete"]
        and drain["files_per_s"] >= TARGET_DRAIN_PER_S
    )
    result = {
        "single": {"runner": ours, "raw": raw, "p99_ratio": round(ratio, 2)},
        "burst": drain,
        "verdict": "PASS" if passed else "FAIL",
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"single files at {RATE_PER_S:.0f}/s, close -> handler/job body (settle = 0)")
    print(f"{'side':<15} {'files':>6} {'seen':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for side in (ours, raw):
        print(
            f"{side['side']:<15} {side['files']:>6} {side['received']:>6} {side['p50_ms']:>8} "
            f"{side['p99_ms']:>8} {side['max_ms']:>8}"
        )
    print(f"p99 ratio runner/raw: {ratio:.1f}x (target runner p99 <= {TARGET_P99_MS:.0f} ms)")
    print(
        f"burst: {drain['processed']}/{drain['files']} files in {drain['drain_s']}s after the first was written "
        f"(writing took {drain['write_s']}s), {drain['runs']} runs: {drain['files_per_s']} files/s "
        f"(target >= {TARGET_DRAIN_PER_S:.0f})"
    )
    print(result["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
