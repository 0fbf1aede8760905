"""Start-up cost of `runner run hello` against the hand-written cron script it replaces.

A crontab line starts a cold process for every fire, so what a user pays per fire is the wall time
of one whole `runner --config X run hello`. The baseline is what teams run today: a plain Python
script that imports SQLAlchemy, creates its table in a SQLite file if missing, records the start,
does the work (formats a greeting), records the end and prints the greeting.

Both run as fresh subprocesses of the same interpreter, alternately (ABBA order, so neither side
always goes first), after one warm-up each (the first `runner run` creates the schema). The script
prints median and p90 of each side, the ratio of the medians (runner / baseline) and PASS/FAIL
against the target; it exits 1 on FAIL.

    .venv/bin/python bench/startup.py            # 20 rounds
    .venv/bin/python bench/startup.py -n 50 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TARGET_RATIO = 1.3

INI = """\
[runner]
var_dir = {var_dir}
database = sqlite:///{var_dir}/runner.db
job_packages = jobs

[job:hello]
description = Smoke job: greets someone and counts the greetings it made
timeout = 1m
"""

# What a team's hand-written cron script typically looks like: one file, SQLAlchemy Core, a
# "job_runs" table it creates itself, a row before and after the work.
BASELINE = '''\
"""Hand-written cron script: record the run in SQLite, do the work, record the end."""

import os
import sys
from datetime import datetime, timezone

import sqlalchemy as sa

DB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baseline.db")

metadata = sa.MetaData()
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("ended_at", sa.DateTime, nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
)


def work(name="world", count=1):
    return f"Hello, {name}! ({count} greeting{'s' if count != 1 else ''})"


def main():
    engine = sa.create_engine(f"sqlite:///{DB_PATH}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        run_id = conn.execute(
            job_runs.insert().values(
                job="hello", status="running", started_at=datetime.now(timezone.utc)
            )
        ).inserted_primary_key[0]
    status, result, error = "succeeded", None, None
    try:
        result = work()
    except Exception as exc:
        status, error = "failed", repr(exc)
    with engine.begin() as conn:
        conn.execute(
            job_runs.update()
            .where(job_runs.c.id == run_id)
            .values(status=status, ended_at=datetime.now(timezone.utc), result=result, error=error)
        )
    if result is not None:
        print(result)
    return 0 if status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
'''


def runner_script() -> Path:
    """The `runner` console script installed next to this interpreter (as crontab lines call it)."""
    bin_dir = Path(sys.executable).parent
    for name in ("runner", "runner.exe"):
        if (bin_dir / name).exists():
            return bin_dir / name
    raise SystemExit(f"bench: no `runner` console script in {bin_dir}; pip install -e . first")


def timed(command: Sequence[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall time of one cold process; stops the benchmark if the command does not succeed."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "Hello, world!" not in done.stdout:
        raise SystemExit(
            f"bench: {' '.join(command)} exited {done.returncode}\n"
            f"stdout: {done.stdout.strip()}\nstderr: {done.stderr.strip()}"
        )
    return elapsed


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p90 of 20 samples is the 18th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(values),
        "p90_s": percentile(values, 0.9),
        "min_s": min(values),
        "max_s": max(values),
    }


def measure(rounds: int, workdir: Path) -> dict[str, object]:
    var_dir = workdir / "var"
    config = workdir / "runner.ini"
    config.write_text(INI.format(var_dir=var_dir), encoding="utf-8")
    baseline = workdir / "baseline.py"
    baseline.write_text(BASELINE, encoding="utf-8")
    runner = runner_script()

    # Like cron: no RUNNER_CONFIG leaking in, no PYTHON* switches (importtime, no bytecode, ...).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PYTHON"))}
    runner_command = [str(runner), "--config", str(config), "run", "hello"]
    sides: dict[str, Callable[[], float]] = {
        "runner": lambda: timed(runner_command, workdir, env),
        "baseline": lambda: timed([sys.executable, str(baseline)], workdir, env),
    }
    for run in sides.values():  # warm-up: schema, bytecode caches, page cache
        run()

    samples: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for index in range(rounds):
        for name in order if index % 2 == 0 else reversed(order):
            samples[name].append(sides[name]())

    runner_stats, baseline_stats = summary(samples["runner"]), summary(samples["baseline"])
    ratio = runner_stats["median_s"] / baseline_stats["median_s"]
    return {
        "rounds": rounds,
        "runner": runner_stats,
        "baseline": baseline_stats,
        "ratio": ratio,
        "target": TARGET_RATIO,
        "passed": ratio <= TARGET_RATIO,
        "samples": samples,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def report(figures: dict[str, Any]) -> str:
    def row(name: str) -> str:
        stats = figures[name]
        return (
            f"  {name:<9} median {stats['median_s'] * 1000:7.1f} ms   "
            f"p90 {stats['p90_s'] * 1000:7.1f} ms   "
            f"min {stats['min_s'] * 1000:7.1f} ms   max {stats['max_s'] * 1000:7.1f} ms"
        )

    verdict = "PASS" if figures["passed"] else "FAIL"
    return "\n".join(
        [
            f"startup: `runner run hello` vs a hand-written SQLAlchemy cron script, "
            f"{figures['rounds']} alternating cold runs each "
            f"(Python {figures['python']}, {figures['cpus']} CPUs)",
            row("runner"),
            row("baseline"),
            f"  ratio (median runner / median baseline) {figures['ratio']:.2f}   "
            f"target <= {figures['target']}   {verdict}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("-n must be at least 1")
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        figures = measure(args.rounds, Path(tmp))
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
