"""Prune benchmark: `runner prune` on a large history, against a raw sqlite3 delete loop, and the
lateness of a daemon's every-1s fires while it prunes.

A SQLite history is seeded with R runs (default 1,000,000) of J jobs (default 50) spread evenly
over D days (default 400), and L log files (default 100,000; every (R/L)th run has one, in its day
folder, or for the oldest tenth of the days in the job's folder itself, as older versions kept
them), each with its run's time as its mtime. Half the jobs keep `90d, 2000` runs (the count
binds), the other half the [runner] default of this benchmark, `90d, 10000` (the age binds); logs
keep `30d, 300`. Then:

  1. a `runner daemon` fires N `every 1s` no-op jobs, spread over the second, on the same database
     (its own prune thread off); their lateness (scheduled instant -> job body entered, as bench/dispatch.py measures
     it) is taken for Q seconds with nothing else running, then while `runner prune` runs;
  2. `runner prune` runs as the crontab line would; its wall time, rows/s and peak RSS are taken;
  3. what is left is checked against the settings: per job, exactly the runs within its count and
     age (by id), and exactly the log files within keep_logs whose run is left;
  4. the baseline: on a copy of the seeded file, a plain sqlite3 loop deletes the same runs with
     `DELETE FROM runs WHERE id IN (...)`, 2,000 ids a transaction, as fast as it can.

Prints rows/s of both (runner / raw), peak RSS, and dispatch p50/p99 without and during the prune.
runner's rate is paced on purpose (a pause after each batch at least as long as the batch, so
fires get the write lock); the raw loop holds the database the whole time.

    .venv/bin/python bench/prune.py                     # 1,000,000 runs, 100,000 logs, 400 days
    .venv/bin/python bench/prune.py --runs 200000 --logs 20000 --quiet-s 10 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from dispatch import percentile  # bench/dispatch.py: the same lateness figures

RUNNER = Path(sys.executable).parent / "runner"
DAY_S = 86400
RAW_BATCH = 2000
KEEP_DEFAULT = (90, 10000)  # [runner] keep_runs of this benchmark: days, count
KEEP_TIGHT = (90, 2000)  # every other job's own keep_runs
KEEP_LOGS = (30, 300)

NOOP_JOB = """
import time
from runner import JobContext, job


@job
def noop(ctx: JobContext, out: str) -> None:
    entered = time.time()
    with open(out, "a") as handle:
        handle.write(f"{ctx.fire.scheduled_at.timestamp():.6f} {entered:.6f}\\n")
"""


def job_name(index: int) -> str:
    return f"hist_{index:03d}"


def keep_of(index: int) -> tuple[int, int]:
    return KEEP_TIGHT if index % 2 else KEEP_DEFAULT


def write_config(work: Path, jobs: int, fire_jobs: int, out: Path) -> Path:
    ini = [
        "[runner]",
        "var_dir = var",
        "timezone = UTC",
        "job_packages = benchjobs",
        "max_workers = 16",
        f"keep_runs = {KEEP_DEFAULT[0]}d, {KEEP_DEFAULT[1]}",
        f"keep_logs = {KEEP_LOGS[0]}d, {KEEP_LOGS[1]}",
        "prune_every = 0",
        "",
    ]
    for i in range(jobs):
        ini += [f"[job:{job_name(i)}]", "uses = benchjobs.noop:noop", f"out = {out}"]
        if keep_of(i) != KEEP_DEFAULT:
            ini.append(f"keep_runs = {keep_of(i)[0]}d, {keep_of(i)[1]}")
        ini.append("")
    for i in range(fire_jobs):  # spread over the second, as bench/dispatch.py does
        start = f"2026-01-01 00:00:{i / fire_jobs:09.6f}"
        ini += [f"[job:fire_{i:03d}]", "uses = benchjobs.noop:noop", f"schedule = every 1s start {start}"]
        ini += [f"out = {out}", ""]
    config = work / "runner.ini"
    config.write_text("\n".join(ini))
    return config


def seed(database: Path, log_dir: Path, runs: int, logs: int, jobs: int, days: int, now: float) -> float:
    """R runs in one INSERT ... SELECT over a recursive series, then the log files. Returns seconds."""
    began = time.monotonic()
    start = now - days * DAY_S
    step = days * DAY_S / runs
    every = max(1, runs // logs)
    flat_before = start + days * DAY_S / 10  # the oldest tenth: logs as older versions kept them
    db = sqlite3.connect(database)
    db.execute(
        """
        INSERT INTO runs (id, job, fire_key, "trigger", attempt, first_run_id, status, late,
                          queued_at, started_at, ended_at, heartbeat_at, host, pid, log_path)
        WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :runs),
        t(i, job, at) AS (
            SELECT i, printf('hist_%03d', i % :jobs), datetime(:start + i * :step, 'unixepoch') || '.000000' FROM s
        )
        SELECT i, job, 'seed:' || i, 'manual', 1, i, 'succeeded', 0, at, at, at, at, 'bench', 1,
               CASE WHEN :start + i * :step < :flat THEN :logs || '/' || job || '/' || i || '.log'
                    ELSE :logs || '/' || job || '/' || substr(at, 1, 10) || '/' || i || '.log' END
        FROM t
        """,
        {"runs": runs, "jobs": jobs, "start": start, "step": step, "flat": flat_before, "logs": str(log_dir)},
    )
    db.commit()
    # every (R/L)th run of each job (ids go round the jobs)
    rows = db.execute(
        "SELECT id, log_path FROM runs WHERE (id / :jobs) % :every = 0", {"jobs": jobs, "every": every}
    ).fetchall()
    db.close()
    made = set()
    for run_id, path in rows:
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            made.add(folder)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"run output\n")
        os.close(fd)
        at = start + run_id * step
        os.utime(path, (at, at))
    return time.monotonic() - began


def expected(database: Path, jobs: int, now: float) -> dict[str, set[int]]:
    """Per job: the run ids the settings keep at `now` (read from the untouched copy)."""
    db = sqlite3.connect(database)
    keep = {}
    for i in range(jobs):
        days, count = keep_of(i)
        cutoff = datetime.fromtimestamp(now - days * DAY_S, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        ids = db.execute(
            "SELECT id FROM runs WHERE job = ? AND queued_at >= ? ORDER BY id DESC LIMIT ?",
            (job_name(i), cutoff, count),
        ).fetchall()
        keep[job_name(i)] = {row[0] for row in ids}
    db.close()
    return keep


def check(database: Path, log_dir: Path, jobs: int, keep_runs: dict[str, set[int]], now: float) -> list[str]:
    """What is left against the settings: per job, exactly the runs `expected` keeps, and exactly
    the newest KEEP_LOGS[1] log files younger than KEEP_LOGS[0] days among those of runs left."""
    problems = []
    db = sqlite3.connect(database)
    days, count = KEEP_LOGS
    for i in range(jobs):
        job = job_name(i)
        left = {row[0] for row in db.execute("SELECT id FROM runs WHERE job = ?", (job,))}
        if left != keep_runs[job]:
            problems.append(f"{job}: {len(left)} runs left, the settings keep {len(keep_runs[job])}")
        files = {int(p.stem): p.stat().st_mtime for p in (log_dir / job).rglob("*.log")}
        ours = sorted((r for r in files if r in left), reverse=True)
        want = set([r for r in ours if files[r] >= now - days * DAY_S][:count] + ours[:1])
        if set(files) != want:
            problems.append(f"{job}: {len(files)} log files left, the settings keep {len(want)}")
    db.close()
    return problems


def raw_delete(database: Path, keep_runs: dict[str, set[int]]) -> tuple[int, float]:
    """The baseline: the same runs deleted by id, RAW_BATCH a transaction, no pause."""
    db = sqlite3.connect(database, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    doomed = []
    for job, kept in keep_runs.items():
        doomed += [r for (r,) in db.execute("SELECT id FROM runs WHERE job = ?", (job,)) if r not in kept]
    doomed.sort()
    began = time.monotonic()
    for at in range(0, len(doomed), RAW_BATCH):
        chunk = doomed[at : at + RAW_BATCH]
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"DELETE FROM runs WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        db.execute("COMMIT")
    seconds = time.monotonic() - began
    db.close()
    return len(doomed), seconds


def lateness(out: Path, since: float, until: float) -> list[float]:
    found = []
    if not out.exists():
        return found
    for line in out.read_text().splitlines():
        scheduled, entered = map(float, line.split())
        if since <= scheduled < until:
            found.append((entered - scheduled) * 1000)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--logs", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--jobs", type=int, default=50, help="jobs in the seeded history")
    parser.add_argument("--fire-jobs", type=int, default=20, help="every-1s jobs the daemon fires")
    parser.add_argument(
        "--quiet-s", type=float, default=30.0, help="seconds of fires measured before the prune"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runner-bench-prune-") as tmp:
        work = Path(tmp)
        (work / "benchjobs").mkdir()
        (work / "benchjobs" / "__init__.py").write_text("")
        (work / "benchjobs" / "noop.py").write_text(NOOP_JOB)
        out = work / "fires.txt"
        config = write_config(work, args.jobs, args.fire_jobs, out)
        env = {**os.environ, "PYTHONPATH": str(work)}
        database, log_dir = work / "var" / "runner.db", work / "var" / "log"
        subprocess.run(
            [RUNNER, "--config", config, "db", "upgrade"], env=env, check=True, capture_output=True
        )
        now = time.time()
        seed_s = seed(database, log_dir, args.runs, args.logs, args.jobs, args.days, now)
        copy = work / "raw.db"
        shutil.copy(database, copy)
        size_before = database.stat().st_size

        daemon = subprocess.Popen(
            [RUNNER, "--config", config, "daemon"],
            env=env,
            stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(8)  # start-up, first fires
        quiet_from = time.time()
        time.sleep(args.quiet_s)
        prune_from = time.time()
        prune = subprocess.Popen(
            [RUNNER, "--config", config, "prune", "--json"], env=env, stdout=subprocess.PIPE, text=True
        )
        stdout = prune.stdout.read()
        _, status, usage = os.wait4(prune.pid, 0)
        prune.returncode = os.waitstatus_to_exitcode(status)
        prune_until = time.time()
        time.sleep(2)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        if prune.returncode != 0:
            print(f"runner prune failed: exit {prune.returncode}\n{stdout}", file=sys.stderr)
            return 1
        report = json.loads(stdout)
        quiet = lateness(out, quiet_from, prune_from)
        during = lateness(out, prune_from, prune_until)
        pruned_at = datetime.fromisoformat(report["now"]).timestamp()  # ages count back from here
        keep_runs = expected(copy, args.jobs, pruned_at)
        problems = check(database, log_dir, args.jobs, keep_runs, pruned_at)
        raw_rows, raw_s = raw_delete(copy, keep_runs)
        prune_s = prune_until - prune_from
        result = {
            "runs_seeded": args.runs,
            "logs_seeded": args.logs,
            "days": args.days,
            "seed_s": round(seed_s, 1),
            "database_mb_before": round(size_before / 2**20, 1),
            "database_mb_after": round(database.stat().st_size / 2**20, 1),
            "runner": {
                "runs_removed": report["runs"],
                "logs_removed": report["logs"],
                "seconds": round(prune_s, 2),
                "rows_per_s": round(report["runs"] / prune_s),
                "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "released_mb": round(report["released_bytes"] / 2**20, 1),
            },
            "raw": {
                "runs_removed": raw_rows,
                "seconds": round(raw_s, 2),
                "rows_per_s": round(raw_rows / raw_s),
            },
            "dispatch": {
                "fire_jobs": args.fire_jobs,
                "quiet_fires": len(quiet),
                "quiet_p50_ms": round(percentile(quiet, 50), 1),
                "quiet_p99_ms": round(percentile(quiet, 99), 1),
                "pruning_fires": len(during),
                "pruning_p50_ms": round(percentile(during, 50), 1),
                "pruning_p99_ms": round(percentile(during, 99), 1),
            },
            "kept_as_configured": not problems,
            "problems": problems[:10],
        }
    result["rows_per_s_ratio"] = round(result["runner"]["rows_per_s"] / result["raw"]["rows_per_s"], 2)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if not problems else 1
    r, raw, d = result["runner"], result["raw"], result["dispatch"]
    print(
        f"history: {args.runs:,} runs of {args.jobs} jobs over {args.days} days, {args.logs:,} log files "
        f"(seeded in {result['seed_s']} s; database {result['database_mb_before']} MB)"
    )
    print(
        f"runner prune: {r['runs_removed']:,} runs and {r['logs_removed']:,} logs in {r['seconds']} s = "
        f"{r['rows_per_s']:,} rows/s; peak RSS {r['peak_rss_mb']} MB; {r['released_mb']} MB given back "
        f"(database now {result['database_mb_after']} MB)"
    )
    print(
        f"raw sqlite3 delete loop: {raw['runs_removed']:,} runs in {raw['seconds']} s = {raw['rows_per_s']:,} rows/s"
    )
    print(f"rows/s runner / raw: {result['rows_per_s_ratio']}x (runner pauses after each batch on purpose)")
    print(
        f"dispatch ({d['fire_jobs']} every-1s jobs): without prune p50 {d['quiet_p50_ms']} ms p99 "
        f"{d['quiet_p99_ms']} ms ({d['quiet_fires']} fires); during prune p50 {d['pruning_p50_ms']} ms "
        f"p99 {d['pruning_p99_ms']} ms ({d['pruning_fires']} fires)"
    )
    print(
        "kept exactly what the settings say"
        if not problems
        else "NOT as configured:\n  " + "\n  ".join(problems[:10])
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
    sys.exit(main())
