"""weekly_report on a large history against a plain sqlite3 script computing the same figures.

Builds a run history of 1,000,000 runs over 50 jobs (embedded SQLite, the engine's own schema,
spread evenly over `--weeks` weeks that end with the reported ISO week), then, in one run:

* aggregates: the job's own SQLAlchemy Core queries (`jobs.weekly_report.job_figures`: per job
  runs, succeeded, failures by status, late, missed, p50/p95 duration, for the week and the week
  before) against a hand-written `sqlite3` script computing the same per-job figures; both in this
  process, alternately, after one warm-up each; the two answers must agree.
* the whole job: a cold `runner run weekly_report -p dry_run=true` (history, image and polling
  figures, CSVs, chart, HTML) against the plain script run as a cold `python` process; the job's
  peak RSS is that process tree's (wait4).

Targets: aggregates ratio <= 1.5, peak RSS <= 300 MB. Exit status 0 when both are met.

    .venv/bin/python bench/report.py                 # 1,000,000 runs over 26 weeks
    .venv/bin/python bench/report.py --weeks 2       # every run in the two weeks the report reads
    .venv/bin/python bench/report.py --runs 200000 --json
    .venv/bin/python bench/report.py --without-index   # what the index of revision 0008 buys
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

TARGET_RATIO = 1.5
TARGET_RSS_MB = 300
WEEK = "2026-W47"  # the reported week: 16-22 November 2026, UTC
JOBS = 50
BATCH = 50_000

INI = """\
[runner]
var_dir = {var_dir}
database = sqlite:///{var_dir}/runner.db
job_packages = jobs
timezone = UTC

[job:weekly_report]
reports = {var_dir}/reports
"""

# The plain script: what a team would write by hand for the same per-job figures.
BASELINE = '''\
"""Per-job figures of one week and the week before, straight from the runs table with sqlite3."""

import csv
import sqlite3
import sys

COUNTS = """
SELECT job,
       SUM(status != 'skipped'), SUM(status = 'succeeded'), SUM(status = 'failed'),
       SUM(status = 'timed_out'), SUM(status = 'killed'), SUM(status = 'lost'),
       SUM(status != 'skipped' AND late), SUM(status = 'skipped' AND "trigger" IN ('cron', 'schedule'))
FROM runs WHERE queued_at >= ? AND queued_at < ? GROUP BY job
"""
DURATIONS = """
SELECT job,
       MAX(CASE WHEN rank = (n + 1) / 2 THEN seconds END),
       MAX(CASE WHEN rank = (n * 95 + 99) / 100 THEN seconds END)
FROM (SELECT job, seconds,
             ROW_NUMBER() OVER (PARTITION BY job ORDER BY seconds) AS rank,
             COUNT(*) OVER (PARTITION BY job) AS n
      FROM (SELECT job, (julianday(ended_at) - julianday(started_at)) * 86400.0 AS seconds
            FROM runs WHERE queued_at >= ? AND queued_at < ? AND status != 'skipped'
                  AND started_at IS NOT NULL AND ended_at IS NOT NULL))
GROUP BY job
"""
NAMES = ("runs", "succeeded", "failed", "timed_out", "killed", "lost", "late", "missed", "p50_s", "p95_s")


def figures(db, start, end):
    out = {row[0]: list(row[1:]) for row in db.execute(COUNTS, (start, end))}
    for job, p50, p95 in db.execute(DURATIONS, (start, end)):
        out[job] += [round(p50, 3), round(p95, 3)]
    return {job: dict(zip(NAMES, values)) for job, values in out.items()}


def main(path, bounds):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    now = figures(db, bounds[1], bounds[2])
    before = figures(db, bounds[0], bounds[1])
    return now, before


if __name__ == "__main__":
    now, before = main(sys.argv[1], sys.argv[2:5])
    out = csv.writer(sys.stdout)
    out.writerow(["job", *NAMES, *(f"prev_{n}" for n in NAMES)])
    for job in sorted(now.keys() | before.keys()):
        out.writerow([job, *now.get(job, {}).values(), *before.get(job, {}).values()])
'''


def text_time(moment: datetime) -> str:
    """A naive UTC datetime as SQLAlchemy stores it in SQLite."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def build_history(workdir: Path, runs: int, weeks: int, *, index: bool = True) -> tuple[Path, float]:
    """`runner db upgrade`, then `runs` rows of JOBS jobs spread evenly over `weeks` weeks."""
    started = time.perf_counter()
    var_dir = workdir / "var"
    config = workdir / "runner.ini"
    config.write_text(INI.format(var_dir=var_dir))
    subprocess.run(
        [runner_script(), "--config", str(config), "db", "upgrade"], check=True, capture_output=True
    )
    end = datetime.combine(date.fromisocalendar(2026, 47, 1) + timedelta(days=7), datetime.min.time())
    first = end - timedelta(weeks=weeks)
    step_us = (end - first) / timedelta(microseconds=1) / runs
    rng = random.Random(16)
    statuses = ["succeeded"] * 40 + ["failed", "failed", "timed_out", "killed", "lost", "skipped", "skipped"]
    triggers = ("cron", "schedule", "manual", "file")
    db = sqlite3.connect(var_dir / "runner.db")
    rows = []
    for n in range(runs):
        queued = first + timedelta(microseconds=int(n * step_us))
        status = rng.choice(statuses)
        began = ended = None
        if status != "skipped":
            began = queued + timedelta(milliseconds=rng.randrange(500))
            ended = began + timedelta(milliseconds=rng.randrange(1, 600_000))
        rows.append(
            (
                f"job{n % JOBS:02d}",
                f"fire-{n}",
                triggers[n % 4],
                status,
                int(status != "skipped" and rng.random() < 0.05),
                text_time(queued),
                began and text_time(began),
                ended and text_time(ended),
            )
        )
        if len(rows) == BATCH or n == runs - 1:
            db.executemany(
                "INSERT INTO runs (job, fire_key, trigger, attempt, status, late, queued_at, started_at, "
                "ended_at, host, pid) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, 'bench', 1)",
                rows,
            )
            db.commit()
            rows = []
    if not index:  # what the report would cost without revision 0008
        db.execute("DROP INDEX ix_runs_queued_at")
    # No ANALYZE: runner never runs it, and its statistics would let SQLite skip-scan
    # ix_runs_reason_queued_at instead, hiding what a real history without the index costs.
    db.commit()
    db.close()
    return config, time.perf_counter() - started


def runner_script() -> str:
    return str(Path(sys.executable).with_name("runner"))


def ours(database: Path) -> tuple[float, dict[str, Any]]:
    """The job's own aggregate queries, as the job runs them (an engine, then ctx.history())."""
    import sqlalchemy as sa

    import jobs.weekly_report as report

    began = time.perf_counter()
    engine = sa.create_engine(f"sqlite:///{database}")
    span = report.resolve_period("week", WEEK, None, "UTC", datetime.now(UTC))
    with engine.connect() as conn:
        rows = report.job_figures(conn, span)
    engine.dispose()
    return time.perf_counter() - began, {row["job"]: row for row in rows}


def theirs(database: Path, script: Path) -> tuple[float, dict[str, Any]]:
    namespace: dict[str, Any] = {"__name__": "baseline"}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    bounds = week_bounds()
    began = time.perf_counter()
    now, before = namespace["main"](str(database), bounds)
    return time.perf_counter() - began, {"now": now, "before": before}


def week_bounds() -> list[str]:
    monday = datetime.combine(date.fromisocalendar(2026, 47, 1), datetime.min.time())
    return [text_time(monday - timedelta(days=7)), text_time(monday), text_time(monday + timedelta(days=7))]


def agree(mine: dict[str, Any], plain: dict[str, Any]) -> None:
    for job in mine.keys() | plain["now"].keys():
        for name, value in plain["now"][job].items():
            assert mine[job][name] == value, (job, name, mine[job][name], value)
            assert mine[job][f"prev_{name}"] == plain["before"][job][name], (job, name)


def whole_job(config: Path, database: Path, script: Path, env: dict[str, str]) -> dict[str, float]:
    def run(argv: list[str]) -> tuple[float, float]:
        began = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({process.returncode}): {process.stderr.read()!r}")
        return wall, usage.ru_maxrss / 1024

    job = [
        runner_script(),
        "--config",
        str(config),
        "run",
        "weekly_report",
        "-p",
        f"week={WEEK}",
        "-p",
        "dry_run=true",
    ]
    plain = [sys.executable, str(script), str(database), *week_bounds()]
    run(job)  # warm: page cache, the job-data file, the report folder
    run(plain)
    job_s, job_rss = run(job)
    plain_s, plain_rss = run(plain)
    return {"job_s": job_s, "job_peak_rss_mb": job_rss, "plain_s": plain_s, "plain_peak_rss_mb": plain_rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--weeks", type=int, default=26, help="weeks the history spans (at least 2)")
    parser.add_argument("-n", "--rounds", type=int, default=5)
    parser.add_argument("--without-index", action="store_true", help="drop ix_runs_queued_at (revision 0008)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PYTHON"))}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as temp:
        workdir = Path(temp)
        script = workdir / "baseline.py"
        script.write_text(BASELINE)
        config, build_s = build_history(workdir, args.runs, max(args.weeks, 2), index=not args.without_index)
        database = workdir / "var" / "runner.db"
        ours(database)  # warm-up: imports, page cache
        theirs(database, script)
        mine_s, plain_s = [], []
        for round_ in range(args.rounds):  # alternate which side goes first
            sides = [(ours, (database,), mine_s), (theirs, (database, script), plain_s)]
            for side, side_args, samples in sides if round_ % 2 == 0 else reversed(sides):
                seconds, answer = side(*side_args)
                samples.append(seconds)
                if side is ours:
                    mine = answer
                else:
                    plain = answer
        agree(mine, plain)
        whole = whole_job(config, database, script, env)
        in_period = sum(row["runs"] + row["missed"] for row in mine.values())
    ratio = statistics.median(mine_s) / statistics.median(plain_s)
    figures = {
        "runs": args.runs,
        "weeks": max(args.weeks, 2),
        "jobs": JOBS,
        "history_build_s": round(build_s, 1),
        "runs_in_reported_week_about": in_period,
        "aggregates_ours_median_s": round(statistics.median(mine_s), 3),
        "aggregates_plain_median_s": round(statistics.median(plain_s), 3),
        "aggregates_ratio": round(ratio, 2),
        **{k: round(v, 3) for k, v in whole.items()},
        "whole_ratio": round(whole["job_s"] / whole["plain_s"], 2),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg": os.getloadavg(),
    }
    passed = ratio <= TARGET_RATIO and whole["job_peak_rss_mb"] <= TARGET_RSS_MB
    figures["result"] = "PASS" if passed else "FAIL"
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"history: {args.runs:,} runs over {JOBS} jobs and {figures['weeks']} weeks ({build_s:.0f} s to build)"
        )
        print(
            f"aggregates ({WEEK} and the week before): ours {figures['aggregates_ours_median_s']:.3f} s, "
            f"plain sqlite3 {figures['aggregates_plain_median_s']:.3f} s, ratio {ratio:.2f} (target <= {TARGET_RATIO})"
        )
        print(
            f"whole job (cold `runner run weekly_report`, chart and HTML included): {whole['job_s']:.2f} s, "
            f"peak RSS {whole['job_peak_rss_mb']:.0f} MB (target <= {TARGET_RSS_MB}); "
            f"plain script as a cold process: {whole['plain_s']:.2f} s, {whole['plain_peak_rss_mb']:.0f} MB"
        )
        print(f"load average {figures['loadavg'][0]:.2f}; {figures['result']}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
