"""Benchmark: `runner run poll_api` against a plain requests + sqlite3 loop, on one local API.

    .venv/bin/python bench/poll.py                   # 200 pages x 500 items, 3 rounds
    .venv/bin/python bench/poll.py --rounds 1 --pages 50
    .venv/bin/python bench/poll.py --json

A threaded werkzeug server on 127.0.0.1 serves the same pre-rendered pages to both sides
(`?page=N&limit=500`, an empty page after the last). The plain loop is what a team writes by hand:
a requests Session, `.json()`, and per page one `executemany` upsert (INSERT ... ON CONFLICT DO
UPDATE, payload as JSON text) and a commit, on a SQLite file in WAL mode with synchronous=NORMAL
(the job-data database's own settings). The job runs as a crontab line runs it: a fresh
`runner run` process (supervisor, forked job process, run history), timed from start to exit, as
is the plain loop's fresh interpreter. Each round times both sides on a fresh database, first with
every item new, then again with every item unchanged (the job compares content hashes and only
touches last_seen; the loop upserts everything again). Target: job >= 0.8x the loop's items/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER_BIN = Path(sys.executable).parent / "runner"
TARGET = 0.8
PAGE_SIZE = 500
START = datetime(2026, 11, 1, tzinfo=UTC)  # items are stamped from here on, four a second, oldest first


def make_pages(pages: int) -> list[bytes]:
    rng = random.Random(15)
    rendered = []
    for page in range(pages):
        items = []
        for index in range(PAGE_SIZE):
            number = page * PAGE_SIZE + index + 1
            items.append(
                {
                    "id": number,
                    "updated_at": (START + timedelta(seconds=number // 4)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "status": rng.choice(("open", "paid", "shipped", "cancelled")),
                    "customer": {"id": rng.randrange(1, 5000), "name": f"Customer {rng.randrange(1, 5000)}"},
                    "total": round(rng.uniform(5, 900), 2),
                    "currency": "EUR",
                    "lines": [
                        {"sku": f"SKU-{rng.randrange(1, 999):03d}", "qty": rng.randrange(1, 5)}
                        for _ in range(rng.randrange(1, 4))
                    ],
                }
            )
        rendered.append(json.dumps({"data": items}).encode())
    rendered.append(json.dumps({"data": []}).encode())
    return rendered


def serve(pages: list[bytes]) -> tuple[str, object]:
    import logging

    from werkzeug import Request, Response
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    @Request.application
    def app(request: Request) -> Response:
        page = int(request.args.get("page", 1))
        body = pages[min(page, len(pages)) - 1]
        return Response(body, 200, content_type="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/orders", server


def plain_loop(url: str, database: str) -> int:
    """The hand-written poller the job is measured against. Returns the items stored."""
    import sqlite3

    import requests

    db = sqlite3.connect(database)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS items (source TEXT, item_id TEXT, payload TEXT, updated TEXT, "
        "seen TEXT, PRIMARY KEY (source, item_id))"
    )
    upsert = (
        "INSERT INTO items VALUES ('orders', ?, ?, ?, ?) ON CONFLICT (source, item_id) DO UPDATE SET "
        "payload = excluded.payload, updated = excluded.updated, seen = excluded.seen"
    )
    stored, page = 0, 1
    with requests.Session() as session:
        while True:
            response = session.get(url, params={"page": page, "limit": PAGE_SIZE}, timeout=30)
            response.raise_for_status()
            items = response.json()["data"]
            if not items:
                break
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with db:
                db.executemany(
                    upsert, [(str(item["id"]), json.dumps(item), item["updated_at"], now) for item in items]
                )
            stored += len(items)
            page += 1
    db.close()
    return stored


def forget(database: Path) -> None:
    """Empty the job's table and watermark between rounds (its schema stays, as when deployed)."""
    import sqlite3

    if database.exists():  # (`runner db upgrade` makes it; the job makes poll_items on its first run)
        with sqlite3.connect(database) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table in ("poll_items", "job_state"):
                if table in tables:
                    db.execute(f"DELETE FROM {table}")
        db.close()


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the whole process tree (user + system), stdout."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200, help="pages of 500 items (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each side once per pass (default 3)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plain-loop", nargs=2, metavar=("URL", "DATABASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        print(plain_loop(*args.plain_loop))
        return 0

    total = args.pages * PAGE_SIZE
    url, server = serve(make_pages(args.pages))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PYTHON"))}
    work = Path(tempfile.mkdtemp(prefix="runner-bench-poll-"))
    config = work / "conf" / "runner.ini"
    config.parent.mkdir(parents=True)
    config.write_text(
        "[runner]\nvar_dir = var\njob_packages = jobs\n\n[job:orders]\nuses = jobs.poll_api:poll_api\n"
        f"url = {url}\nitems = data\nupdated_field = updated_at\npagination = page\n"
        f"page_size = {PAGE_SIZE}\nmax_pages = {args.pages + 1}\n"
    )
    job_argv = [str(RUNNER_BIN), "--config", str(config), "run", "orders", "--json"]
    names = ("job new", "loop new", "job same", "loop same")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    in_job: list[float] = []
    try:
        timed([str(RUNNER_BIN), "--config", str(config), "db", "upgrade"], env, work)  # a deployed runner
        for round_number in range(args.rounds):
            for side in ("job", "loop") if round_number % 2 == 0 else ("loop", "job"):
                database = work / f"loop-{round_number}.db"
                for runs, label in ((0, "new"), (1, "same")):
                    if side == "job":
                        if runs == 0:
                            forget(work / "conf" / "var" / "runner-jobs.db")
                        took, used, out = timed(job_argv, env, work)
                        result = json.loads(out)["result"]
                        assert result[label if label == "new" else "unchanged"] == total, result
                        in_job.append(result["seconds"])
                    else:
                        argv = [sys.executable, __file__, "--plain-loop", url, str(database)]
                        took, used, out = timed(argv, env, work)
                        assert int(out) == total, out
                    seconds[f"{side} {label}"].append(took)
                    cpu[f"{side} {label}"].append(used)
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    figures = {name: round(total / statistics.median(values)) for name, values in seconds.items()}
    per_cpu = {name: round(total / statistics.median(values)) for name, values in cpu.items()}
    ratios = {
        label: round(figures[f"job {label}"] / figures[f"loop {label}"], 3) for label in ("new", "same")
    }
    cpu_ratios = {
        label: round(per_cpu[f"job {label}"] / per_cpu[f"loop {label}"], 3) for label in ("new", "same")
    }
    passed = ratios["new"] >= TARGET
    if args.json:
        print(
            json.dumps(
                {
                    "items": total,
                    "items_per_s": figures,
                    "items_per_cpu_s": per_cpu,
                    "ratio": ratios,
                    "cpu_ratio": cpu_ratios,
                    "pass": passed,
                }
            )
        )
        return 0 if passed else 1
    print(f"{args.pages} pages x {PAGE_SIZE} items = {total} items, {args.rounds} rounds (medians)")
    print(f"{'side':<40} {'seconds':>8} {'items/s':>9} {'cpu s':>6} {'items/cpu s':>12}")
    for name, values in seconds.items():
        side, label = name.split()
        what = "all new" if label == "new" else "all unchanged"
        shown = f"{'runner run poll_api' if side == 'job' else 'plain requests + sqlite3'}, {what}"
        print(
            f"{shown:<40} {statistics.median(values):>8.2f} {figures[name]:>9} "
            f"{statistics.median(cpu[name]):>6.2f} {per_cpu[name]:>12}"
        )
    print(f"(inside the job process: median {statistics.median(in_job):.2f}s of work per run)")
    print(
        f"ratio job/loop, items/s: {ratios['new']:.2f}x all new, {ratios['same']:.2f}x all unchanged; "
        f"items per CPU second: {cpu_ratios['new']:.2f}x, {cpu_ratios['same']:.2f}x"
    )
    print(f"target >= {TARGET}x items/s, all new: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
