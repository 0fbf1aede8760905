"""Dispatch benchmark: lateness of scheduled fires through `runner daemon` vs raw APScheduler.

Both sides run N `every 1s` no-op jobs for D seconds, one side after the other, in this run:
  runner  - `runner daemon` on an embedded SQLite file: each fire is claimed in the database,
            forked from the fork server, supervised and recorded (the full execution path);
  raw     - APScheduler 3 BackgroundScheduler calling the same no-op in a thread pool.
Lateness = scheduled instant -> job body entered. Jobs are spread over the second (job i starts
at +i*(1000/N) ms) on both sides; --aligned fires them all at the same instant instead.
Prints p50/p99 lateness, fires lost and duplicated, and CPU per fire.

--overload runs the runner side alone with more due fires than workers: N `every 1s` jobs that
take 0.5 s, 1 s or 1.5 s each on `--workers` workers (default 8 jobs on 2 workers: about 8 fires
due per second for about 2 runs' worth of capacity). It prints, from the run history, per-job
runs (fairness = max/min runs per job; each job's runs against its equal share), lateness p50/p99
(scheduled time to start, of the runs that ran) and the skipped fires by reason. Targets: every
job within +-20 % of its share, p99 lateness <= the longest job's duration.

    .venv/bin/python bench/dispatch.py            # 100 jobs, 60 s a side
    .venv/bin/python bench/dispatch.py -n 20 -d 15 --json
    .venv/bin/python bench/dispatch.py --overload -d 60
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

TARGET_P99_MS = 50.0
RUNNER = Path(sys.executable).parent / "runner"

NOOP_JOB = """
import time
from runner import JobContext, job


@job
def noop(ctx: JobContext, out: str) -> None:
    entered = time.time()
    with open(out, "a") as handle:
        handle.write(f"{ctx.job} {ctx.fire.scheduled_at.timestamp():.6f} {entered:.6f}\\n")
"""

RAW_SCRIPT = """
import json, sys, time
from datetime import datetime, timedelta, timezone
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

n, duration, t0, spread, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
records = []

def noop(name, start):
    entered = time.time()
    scheduled = start + round(entered - start - 0.5)  # the whole second this fire belongs to
    records.append((name, scheduled, entered))

scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(16)}, timezone=timezone.utc,
                                job_defaults={"coalesce": True, "max_instances": 1000, "misfire_grace_time": 3600})
for i in range(n):
    start = t0 + (i * (1.0 / n) if spread else 0.0)
    scheduler.add_job(noop, IntervalTrigger(seconds=1, start_date=datetime.fromtimestamp(start, timezone.utc)),
                      args=(f"noop_{i:03d}", start))
scheduler.start()
time.sleep(t0 + duration - time.time() + 0.5)
scheduler.shutdown(wait=True)
with open(out, "w") as f:
    json.dump(records, f)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def expected_fires(n: int, t0: float, duration: float, spread: bool) -> set[tuple[str, float]]:
    fires = set()
    for i in range(n):
        start = t0 + (i * (1.0 / n) if spread else 0.0)
        k = 0
        while start + k < t0 + duration:
            fires.add((f"noop_{i:03d}", round(start + k, 3)))
            k += 1
    return fires


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_runner_side(work: Path, n: int, duration: float, spread: bool) -> dict:
    jobs = work / "benchjobs"
    jobs.mkdir()
    (jobs / "__init__.py").write_text("")
    (jobs / "noop.py").write_text(NOOP_JOB)
    out = work / "runner-records.txt"
    t0 = math.ceil(time.time()) + 10.0  # the daemon starts (imports, forks its workers) before the first fire
    ini = [
        "[runner]",
        "var_dir = var",
        "timezone = UTC",
        "job_packages = benchjobs",
        "max_workers = 16",
        "",
    ]
    for i in range(n):
        start = datetime.fromtimestamp(t0 + (i * (1.0 / n) if spread else 0.0), UTC)
        ini += [
            f"[job:noop_{i:03d}]",
            "uses = benchjobs.noop:noop",
            f"schedule = every 1s start {start:%Y-%m-%d %H:%M:%S.%f}",
            f"out = {out}",
            "",
        ]
    config = work / "runner.ini"
    config.write_text("\n".join(ini))
    env = {**os.environ, "PYTHONPATH": str(work)}
    subprocess.run([RUNNER, "--config", config, "db", "upgrade"], env=env, check=True, capture_output=True)
    cpu_before = child_cpu_s()
    daemon = subprocess.Popen([RUNNER, "--config", config, "daemon"], env=env, stderr=subprocess.DEVNULL)
    time.sleep(max(0.0, t0 + duration - time.time() + 0.3))
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=120)
    cpu = child_cpu_s() - cpu_before
    records = []
    for line in out.read_text().splitlines():
        name, scheduled, entered = line.split()
        records.append((name, float(scheduled), float(entered)))
    in_window = [r for r in records if r[1] < t0 + duration]
    db = sqlite3.connect(work / "var" / "runner.db")
    keys = db.execute(
        "SELECT job, fire_key, COUNT(*) FROM runs WHERE attempt = 1 GROUP BY job, fire_key"
    ).fetchall()
    statuses = dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    return summarise(
        "runner daemon",
        in_window,
        expected_fires(n, t0, duration, spread),
        cpu,
        statuses=statuses,
        duplicated_rows=sum(c - 1 for _, _, c in keys),
    )


SLEEP_JOB = """
import time
from runner import job


@job
def busy(seconds: float) -> None:
    time.sleep(seconds)
"""
OVERLOAD_SHARE_TOLERANCE = 0.2


def job_seconds(i: int) -> float:
    return 0.5 * (1 + i % 3)


def run_overload(work: Path, n: int, duration: float, workers: int) -> dict:
    jobs = work / "benchjobs"
    jobs.mkdir()
    (jobs / "__init__.py").write_text("")
    (jobs / "busy.py").write_text(SLEEP_JOB)
    ini = [
        "[runner]",
        "var_dir = var",
        "timezone = UTC",
        "job_packages = benchjobs",
        f"max_workers = {workers}",
    ]
    for i in range(n):
        ini += [
            "",
            f"[job:busy_{i:03d}]",
            "uses = benchjobs.busy:busy",
            "schedule = every 1s",
            f"seconds = {job_seconds(i)}",
        ]
    config = work / "runner.ini"
    config.write_text("\n".join(ini) + "\n")
    env = {**os.environ, "PYTHONPATH": str(work)}
    subprocess.run([RUNNER, "--config", config, "db", "upgrade"], env=env, check=True, capture_output=True)
    daemon = subprocess.Popen([RUNNER, "--config", config, "daemon"], env=env, stderr=subprocess.DEVNULL)
    time.sleep(duration)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=120)
    db = sqlite3.connect(work / "var" / "runner.db")
    ran = db.execute(
        "SELECT job, late_s FROM runs WHERE status = 'succeeded' AND trigger = 'schedule' AND late_s IS NOT NULL"
    ).fetchall()
    skipped = dict(db.execute("SELECT reason, COUNT(*) FROM runs WHERE status = 'skipped' GROUP BY reason"))
    runs = {f"busy_{i:03d}": 0 for i in range(n)}
    for name, _ in ran:
        runs[name] += 1
    share = sum(runs.values()) / n
    lateness_ms = [late_s * 1000 for _, late_s in ran]
    longest_ms = max(job_seconds(i) for i in range(n)) * 1000
    worst_share = max(abs(count - share) / share for count in runs.values()) if share else math.inf
    p99 = percentile(lateness_ms, 99)
    return {
        "jobs": n,
        "workers": workers,
        "duration_s": duration,
        "runs": sum(runs.values()),
        "runs_per_job_min": min(runs.values()),
        "runs_per_job_max": max(runs.values()),
        "fairness_max_min": round(max(runs.values()) / max(1, min(runs.values())), 2),
        "worst_share_deviation": round(worst_share, 3),
        "lateness_p50_ms": round(percentile(lateness_ms, 50), 1),
        "lateness_p99_ms": round(p99, 1),
        "longest_job_ms": longest_ms,
        "skipped": skipped,
        "verdict": "PASS" if worst_share <= OVERLOAD_SHARE_TOLERANCE and p99 <= longest_ms else "FAIL",
    }


def print_overload(result: dict) -> None:
    print(
        f"overload: {result['jobs']} every-1s jobs of 0.5-1.5 s on {result['workers']} workers, "
        f"{result['duration_s']:.0f} s"
    )
    print(
        f"runs {result['runs']}; per job min {result['runs_per_job_min']} max {result['runs_per_job_max']} "
        f"(fairness max/min {result['fairness_max_min']}, worst deviation from share "
        f"{result['worst_share_deviation'] * 100:.0f} %)"
    )
    print(
        f"lateness p50 {result['lateness_p50_ms']} ms, p99 {result['lateness_p99_ms']} ms "
        f"(longest job {result['longest_job_ms']:.0f} ms)"
    )
    print(f"skipped by reason: {result['skipped']}")
    print(f"target: every job within +-20 % of its share, p99 <= longest job: {result['verdict']}")


def run_raw_side(work: Path, n: int, duration: float, spread: bool) -> dict:
    script = work / "raw.py"
    script.write_text(textwrap.dedent(RAW_SCRIPT))
    out = work / "raw-records.json"
    t0 = math.ceil(time.time()) + 2.0
    cpu_before = child_cpu_s()
    subprocess.run(
        [sys.executable, script, str(n), str(duration), str(t0), "1" if spread else "0", out], check=True
    )
    cpu = child_cpu_s() - cpu_before
    records = [tuple(r) for r in json.loads(out.read_text())]
    in_window = [r for r in records if r[1] < t0 + duration - 1e-6]
    return summarise("raw APScheduler", in_window, expected_fires(n, t0, duration, spread), cpu)


def summarise(side: str, records: list, expected: set, cpu_s: float, **extra) -> dict:
    lateness_ms = [(entered - scheduled) * 1000 for _, scheduled, entered in records]
    if os.environ.get("BENCH_DUMP"):
        with open(os.environ["BENCH_DUMP"] + "." + side.split()[0], "w") as handle:
            json.dump(sorted(records, key=lambda r: r[1]), handle)
    seen: dict[tuple[str, float], int] = {}
    for name, scheduled, _ in records:
        key = (name, round(scheduled, 3))
        seen[key] = seen.get(key, 0) + 1
    return {
        "side": side,
        "fires_expected": len(expected),
        "fires_seen": len(seen),
        "fires_lost": len(expected - set(seen)),
        "fires_duplicated": sum(c - 1 for c in seen.values()),
        "lateness_p50_ms": round(percentile(lateness_ms, 50), 2),
        "lateness_p99_ms": round(percentile(lateness_ms, 99), 2),
        "lateness_max_ms": round(max(lateness_ms, default=math.nan), 2),
        "cpu_per_fire_ms": round(cpu_s * 1000 / max(1, len(records)), 2),
        **extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--jobs", type=int, default=100, help="every-1s jobs (default 100)")
    parser.add_argument("-d", "--duration", type=float, default=60.0, help="seconds a side (default 60)")
    parser.add_argument("--aligned", action="store_true", help="fire every job at the same instant")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--overload", action="store_true", help="more due fires than workers (runner only)")
    parser.add_argument("--workers", type=int, default=2, help="--overload: max_workers (default 2)")
    args = parser.parse_args()
    if args.overload:
        with tempfile.TemporaryDirectory(prefix="runner-bench-overload-") as tmp:
            result = run_overload(
                Path(tmp), 8 if args.jobs == 100 else args.jobs, args.duration, args.workers
            )
        print(json.dumps(result, indent=2)) if args.json else print_overload(result)
        return 0 if result["verdict"] == "PASS" else 1
    spread = not args.aligned
    with tempfile.TemporaryDirectory(prefix="runner-bench-dispatch-") as tmp:
        work = Path(tmp)
        (work / "ours").mkdir()
        (work / "raw").mkdir()
        ours = run_runner_side(work / "ours", args.jobs, args.duration, spread)
        raw = run_raw_side(work / "raw", args.jobs, args.duration, spread)
    ratio = ours["lateness_p99_ms"] / raw["lateness_p99_ms"] if raw["lateness_p99_ms"] else math.inf
    verdict = (
        "PASS"
        if ours["lateness_p99_ms"] <= TARGET_P99_MS
        and ours["fires_lost"] == 0
        and ours["fires_duplicated"] == 0
        and ours["duplicated_rows"] == 0
        else "FAIL"
    )
    result = {
        "jobs": args.jobs,
        "duration_s": args.duration,
        "spread": spread,
        "runner": ours,
        "raw": raw,
        "p99_ratio": round(ratio, 2),
        "target_p99_ms": TARGET_P99_MS,
        "verdict": verdict,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{args.jobs} every-1s jobs, {args.duration:.0f}s a side, fires {'spread over' if spread else 'aligned at the start of'} each second"
    )
    header = f"{'side':<16} {'expected':>8} {'lost':>5} {'dup':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'cpu/fire ms':>11}"
    print(header)
    for side in (ours, raw):
        print(
            f"{side['side']:<16} {side['fires_expected']:>8} {side['fires_lost']:>5} {side['fires_duplicated']:>4} "
            f"{side['lateness_p50_ms']:>8} {side['lateness_p99_ms']:>8} {side['lateness_max_ms']:>8} {side['cpu_per_fire_ms']:>11}"
        )
    print(f"runner statuses: {ours['statuses']}; duplicate fire rows: {ours['duplicated_rows']}")
    print(
        f"p99 ratio runner/raw: {ratio:.1f}x; target runner p99 <= {TARGET_P99_MS:.0f} ms, 0 lost: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
