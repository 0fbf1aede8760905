"""A Prometheus scrape of runner's metrics against a plain sqlite3 exporter on a large history.

Builds a run history of `--runs` runs over 20 jobs (embedded SQLite, the engine's own schema, all
queued in the past), then, in this process:

* baseline: what a hand-written exporter does on every scrape — one sqlite3 query grouping the
  whole `runs` table by job and status, with the duration buckets and the last success;
* runner: `runner.metrics.HistoryCollector` rendered by prometheus_client (`generate_latest`),
  which reads the totals folded below its watermark plus the runs after it. Its first scrape
  folds the history (timed and shown on its own); the scrapes after it are the comparison.

Both sides are scraped alternately `--rounds` times; their run counts must agree. Target: the
median runner scrape takes at most a tenth of the baseline's. Exit status 0 when it is met.

    .venv/bin/python bench/metrics.py                 # 1,000,000 runs
    .venv/bin/python bench/metrics.py --runs 200000 --rounds 5
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

TARGET_RATIO = 0.1
JOBS = 20
BATCH = 50_000
STATUSES = ["succeeded"] * 8 + ["failed", "skipped"]

BASELINE = """
SELECT job, status, COUNT(*),
       SUM((julianday(ended_at) - julianday(started_at)) * 86400.0),
       {buckets},
       MAX(ended_at)
FROM runs WHERE status NOT IN ('queued', 'running') GROUP BY job, status
"""


def build(path: Path, count: int) -> None:
    from runner.store import Store

    store = Store(f"sqlite:///{path}")
    store.ensure_schema()
    store.engine.dispose()
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=30 * count + 3600)
    rng = random.Random(17)
    with sqlite3.connect(path) as conn:
        for first in range(0, count, BATCH):
            rows = []
            for i in range(first, min(count, first + BATCH)):
                queued = start + timedelta(seconds=30 * i)
                status = rng.choice(STATUSES)
                began = None if status == "skipped" else queued
                ended = queued + timedelta(seconds=rng.random() * 600)
                rows.append(
                    (f"job{i % JOBS}", f"k{i}", "schedule", 1, status, 0, queued, queued, began, ended)
                )
            conn.executemany(
                "INSERT INTO runs (job, fire_key, trigger, attempt, status, late, scheduled_at, queued_at,"
                " started_at, ended_at, host, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'bench', 1)",
                [tuple(str(v) if isinstance(v, datetime) else v for v in row) for row in rows],
            )


def baseline(path: Path, bounds: tuple[float, ...]) -> dict[tuple[str, str], int]:
    buckets = ", ".join(
        f"SUM((julianday(ended_at) - julianday(started_at)) * 86400.0 <= {bound})" for bound in bounds
    )
    with sqlite3.connect(path) as conn:
        rows = conn.execute(BASELINE.format(buckets=buckets)).fetchall()
    return {(job, status): count for job, status, count, *_rest in rows}


def scraped_runs(text: bytes) -> dict[tuple[str, str], int]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.labels["job"], s.labels["status"]): int(s.value)
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == "runner_runs_total"
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from prometheus_client import generate_latest

    from runner.metrics import DURATION_BUCKETS_S, HistoryCollector, registry_for
    from runner.store import Store

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runner.db"
        started = time.perf_counter()
        build(path, args.runs)
        print(f"history: {args.runs:,} runs over {JOBS} jobs, built in {time.perf_counter() - started:.1f}s")
        store = Store(f"sqlite:///{path}")
        registry = registry_for(HistoryCollector(lambda: SimpleNamespace(jobs={}), store))
        started = time.perf_counter()
        generate_latest(registry)
        print(f"runner's first scrape (counts the history once): {time.perf_counter() - started:.2f}s")
        ours, theirs = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            text = generate_latest(registry)
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            expected = baseline(path, DURATION_BUCKETS_S)
            theirs.append(time.perf_counter() - started)
            if scraped_runs(text) != expected:
                print("the two sides disagree on the run counts", file=sys.stderr)
                return 1
        store.engine.dispose()
    runner_s, baseline_s = statistics.median(ours), statistics.median(theirs)
    ratio = runner_s / baseline_s
    print(
        f"scrape, median of {args.rounds}: runner {runner_s * 1000:.1f} ms, plain sqlite3 {baseline_s * 1000:.1f} ms"
    )
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"ratio runner / baseline: {ratio:.3f} (target <= {TARGET_RATIO}) {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
