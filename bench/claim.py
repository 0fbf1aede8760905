"""Claim benchmark: fires claimed per second by `Store.claim` vs a raw INSERT ... ON CONFLICT DO
NOTHING loop, on the same database in the same run.

Every claimer (a process of its own, as every daemon on every host is) tries every fire key of
the same list, in order, as daemons on several hosts all try each fire: exactly one wins each key.
Rate = fire keys decided per second (from the first claimer's first claim to the last one's last).
  runner - `Store.claim(job, fire_key, trigger="schedule")`: the run row (unique job + fire key)
           in one autocommit statement; a loser gets AlreadyRan naming the winner when it can
           see it;
  raw    - the same run row (job, key, trigger, attempt, status, times, host, pid, pid namespace) inserted by
           `INSERT INTO raw_runs (...) VALUES (...) ON CONFLICT DO NOTHING` in autocommit through
           the bare driver (sqlite3, psycopg), into a copy of the runs table (its columns, unique
           keys and indexes): what a hand-written claim of that row costs. The ratio is runner/raw.
  key    - for scale only: the same loop on a two-column table (job, fire_key, unique): the cost
           of a bare unique key, without the run row that history, retries and `runner status`
           read. Its rate is printed, no ratio is taken against it.
Every side runs on an embedded SQLite file (WAL) and on PostgreSQL (a fresh schema, dropped at
the end) with 1, 4 and 16 claimers. A case's claimer processes are started once, open and warm
their connections (runner's kept claim connection, the raw and key-only ones), and then run
every round of the case, started together at a barrier; the sides take turns (runner, raw, key,
then the other way round), 9 rounds a side. A round has as many keys as a first raw round
decides in about --seconds (0.5 s). The ratio of a case is the median of its round pairs'
ratios (a runner round over the raw round next to it in time), so that the shared machine's
slow spells, which last seconds and move one round by half, weigh on both sides of a pair and
on few pairs. Prints the rates (medians), the ratio, the lowest and highest ratio of a round
pair (target: runner >= 0.7x raw in every case), and checks each key was won once.

    .venv/bin/python bench/claim.py                     # PostgreSQL on 127.0.0.1 too
    .venv/bin/python bench/claim.py -k 300 --json        # a fixed key count
    .venv/bin/python bench/claim.py --pg postgresql://user@host/db   # another server
    .venv/bin/python bench/claim.py --no-pg              # SQLite only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.7
PROBE_KEYS = 300
CLAIMERS = (1, 4, 16)
SIDES = ("runner", "raw", "key")
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
JOB = "bench"


def _keys(count: int, round_id: str) -> list[str]:
    return [f"{round_id}-{n:06d}" for n in range(count)]


# --- the claimers (each in a process of its own, kept for a case's rounds) --------------------------


def _claimer(url: str, barrier: Any, orders: Any, results: Any) -> None:
    """One claimer process: its runner Store (its claim connection), its raw and key-only
    connections, all opened and warmed before the first round; then, per order (side, round id,
    key count), every key of the round, started with the other claimers at the barrier."""
    from runner.errors import AlreadyRan
    from runner.store import Store

    store = Store(url)
    store.ensure_schema()
    for _ in range(2):  # the first claim borrows from the pool, the next opens the kept connection
        store.claim(job=f"{JOB}-warm", fire_key=uuid.uuid4().hex, trigger="schedule")

    def runner(keys: list[str]) -> int:
        won = 0
        for key in keys:
            try:
                store.claim(job=JOB, fire_key=key, trigger="schedule")
                won += 1
            except AlreadyRan:
                pass
        return won

    sides = {"runner": runner, "raw": _raw_loop(url, "raw_runs"), "key": _raw_loop(url, "raw_fires")}
    while (order := orders.get()) is not None:
        side, round_id, count = order
        keys = _keys(count, round_id)
        barrier.wait()
        began = time.perf_counter()
        won = sides[side](keys)
        results.put((won, began, time.perf_counter()))


def _raw_loop(url: str, table: str) -> Any:
    """The raw side's loop (table raw_runs: the run row) or the key-only one (raw_fires), on a
    connection of its own through the bare driver, in autocommit."""
    import os
    from datetime import UTC, datetime

    sqlite = url.startswith("sqlite")
    if sqlite:
        import sqlite3

        conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    else:
        import psycopg

        conn = psycopg.connect(_pg_dsn(url), autocommit=True)
    mark = "?" if sqlite else "%s"
    if table == "raw_runs":
        from runner.store.host import HOSTNAME, PIDNS

        columns = "job, fire_key, trigger, attempt, status, late, queued_at, started_at, heartbeat_at, host, pid, pidns"
        insert = f"INSERT INTO raw_runs ({columns}) VALUES ({', '.join([mark] * 12)}) ON CONFLICT DO NOTHING"
        pid = os.getpid()

        def row(key: str) -> tuple[Any, ...]:
            now = datetime.now(UTC).replace(tzinfo=None)
            when = now.isoformat(" ") if sqlite else now
            return (JOB, key, "schedule", 1, "running", False, when, when, when, HOSTNAME, pid, PIDNS)
    else:
        insert = f"INSERT INTO raw_fires (job, fire_key) VALUES ({mark}, {mark}) ON CONFLICT DO NOTHING"

        def row(key: str) -> tuple[Any, ...]:
            return (JOB, key)

    for n in range(6):  # warm: psycopg prepares a statement on its fifth run
        conn.execute(insert, row(f"warm-{uuid.uuid4().hex}-{n}"))

    def loop(keys: list[str]) -> int:
        won = 0
        for key in keys:
            won += conn.execute(insert, row(key)).rowcount
        return won

    return loop


def _pg_dsn(url: str) -> str:
    """The psycopg connection string of a SQLAlchemy URL (options= carries the search_path)."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


# --- one case's rounds -----------------------------------------------------------------------------


class _Claimers:
    """`count` claimer processes on one database, kept for a case's rounds."""

    def __init__(self, url: str, count: int) -> None:
        context = mp.get_context("fork")
        self.barrier = context.Barrier(count)
        self.results = context.Queue()
        self.orders = [context.Queue() for _ in range(count)]
        self.procs = [
            context.Process(target=_claimer, args=(url, self.barrier, orders, self.results))
            for orders in self.orders
        ]
        for proc in self.procs:
            proc.start()

    def round(self, side: str, count: int) -> dict[str, Any]:
        """Every claimer tries every key of a fresh list of `count`; the round is timed from the
        first claimer's first claim to the last one's last (their wake-up is not timed)."""
        round_id = uuid.uuid4().hex[:8]
        for orders in self.orders:
            orders.put((side, round_id, count))
        outcomes = [self._outcome(side) for _ in self.procs]
        elapsed = max(done for _, _, done in outcomes) - min(began for _, began, _ in outcomes)
        won = sum(w for w, _, _ in outcomes)
        if won != count:
            sys.exit(f"{side} with {len(self.procs)} claimers: {won} wins for {count} fire keys")
        return {"side": side, "keys": count, "seconds": elapsed, "rate": count / elapsed}

    def _outcome(self, side: str) -> tuple[int, float, float]:
        """The next claimer's (wins, start, end); a claimer that died ends the bench at once
        (the others wait at the barrier for it)."""
        import queue

        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [proc for proc in self.procs if proc.exitcode is not None]
                if dead:
                    for proc in self.procs:
                        proc.kill()
                    sys.exit(f"{side}: a claimer process died (exit status {dead[0].exitcode}); see above")

    def close(self) -> None:
        for orders in self.orders:
            orders.put(None)
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.exitcode != 0:
                sys.exit(f"a claimer process ended with exit status {proc.exitcode}")


def _case(url: str, claimers: int, keys: int | None, seconds: float, rounds: int) -> dict[str, Any]:
    """One database and claimer count: the sides' rounds in turn (runner, raw, key, then the
    other way round), each pair of runner and raw rounds next to each other in time."""
    group = _Claimers(url, claimers)
    try:
        if keys is None:  # as many keys as the raw side decides in about `seconds`
            probe = group.round("raw", PROBE_KEYS)
            keys = max(PROBE_KEYS, int(round(probe["rate"] * seconds, -2)))
        rates: dict[str, list[float]] = {side: [] for side in SIDES}
        for n in range(rounds):
            for side in SIDES if n % 2 == 0 else SIDES[::-1]:
                rates[side].append(group.round(side, keys)["rate"])
    finally:
        group.close()
    paired = [a / b for a, b in zip(rates["runner"], rates["raw"], strict=True)]
    return {
        "claimers": claimers,
        "keys": keys,
        "runner_per_s": round(statistics.median(rates["runner"]), 1),
        "raw_per_s": round(statistics.median(rates["raw"]), 1),
        "ratio": round(statistics.median(paired), 3),
        "round_ratios": [round(r, 3) for r in paired],
        "key_only_per_s": round(statistics.median(rates["key"]), 1),
    }


def _prepare(url: str) -> None:
    """The engine's schema; the raw side's copy of the runs table (columns, keys, indexes); the
    key side's two-column table."""
    import re

    import sqlalchemy as sa

    from runner.store import Store

    store = Store(url)
    store.ensure_schema()
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("CREATE TABLE raw_runs (LIKE runs INCLUDING ALL)"))
        else:
            ddl = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE tbl_name = 'runs' AND sql IS NOT NULL")
            )
            for (sql,) in ddl.all():
                conn.execute(sa.text(re.sub(r"\bruns\b|(?<=_)runs(?=_)", "raw_runs", sql)))
        conn.execute(
            sa.text(
                "CREATE TABLE raw_fires (job TEXT NOT NULL, fire_key TEXT NOT NULL, UNIQUE (job, fire_key))"
            )
        )
    store.engine.dispose()


def _pg_schema(admin_url: str) -> tuple[str, Any]:
    import sqlalchemy as sa

    from runner.store import normalise_url

    schema = f"bench_claim_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalise_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in admin_url else "?"
    return f"{normalise_url(admin_url)}{separator}options=-csearch_path%3D{schema}", (admin, schema)


def _drop(handle: tuple[Any, str]) -> None:
    import sqlalchemy as sa

    admin, schema = handle
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-k", "--keys", type=int, help="fire keys a round (default: what the raw side decides in --seconds)"
    )
    parser.add_argument(
        "-s", "--seconds", type=float, default=0.5, help="the length a round's keys are set for (default 0.5)"
    )
    parser.add_argument("-r", "--rounds", type=int, default=9, help="rounds a side, in turns (default 9)")
    parser.add_argument("--pg", default=LOCAL_PG, help=f"PostgreSQL server URL (default {LOCAL_PG})")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-claim-") as tmp:
        databases = [("sqlite", f"sqlite:///{Path(tmp) / 'runner.db'}", None)]
        if not args.no_pg:
            url, handle = _pg_schema(args.pg)
            databases.append(("postgresql", url, handle))
        try:
            for backend, url, _ in databases:
                _prepare(url)
                for claimers in CLAIMERS:
                    case = _case(url, claimers, args.keys, args.seconds, args.rounds)
                    figures.append({"backend": backend, **case})
        finally:
            for _, _, handle in databases:
                if handle is not None:
                    _drop(handle)
    worst = min(f["ratio"] for f in figures)
    if args.json:
        print(json.dumps({"figures": figures, "target": TARGET_RATIO, "worst": worst}, indent=2))
    else:
        print(
            f"{'DATABASE':<11} {'CLAIMERS':>8} {'KEYS':>6} {'RUNNER/S':>9} {'RAW/S':>9} {'RATIO':>6} "
            f"{'ROUNDS':>10} {'KEY-ONLY/S':>10}"
        )
        for f in figures:
            spread = f"{min(f['round_ratios']):.2f}-{max(f['round_ratios']):.2f}"
            print(
                f"{f['backend']:<11} {f['claimers']:>8} {f['keys']:>6} {f['runner_per_s']:>9.0f} "
                f"{f['raw_per_s']:>9.0f} {f['ratio']:>6.2f} {spread:>10} {f['key_only_per_s']:>10.0f}"
            )
        verdict = "PASS" if worst >= TARGET_RATIO else "FAIL"
        print(f"worst ratio {worst:.2f} (target >= {TARGET_RATIO}): {verdict}")
    return 0 if worst >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
