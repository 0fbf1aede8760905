"""The run history: all SQL the engine runs. `Store` is one database (engine, schema,
transactions, runs); leases, file claims, daemons and job state have one class each on it.

Module map: database.py (Store), runs.py and history.py (its runs, written and read),
leases.py, files.py, daemons.py, state.py (one table each, on base.py's StorePart),
totals.py (aggregates for metrics),
sqlite_file.py (a replaced file, the WAL), records.py (RunRecord, RunEnd), clock.py (the
database server's clock in SQL), engine.py (URLs, engine, SQLite settings), queue.py (the
writer queue), host.py (where a process is, whether it lives)."""

from __future__ import annotations

from runner.store.database import MIGRATIONS_DIR, Store
from runner.store.engine import create_engine, default_data_url, normalise_url
from runner.store.files import MAX_FILE_ATTEMPTS, ORPHAN_CLAIM_S
from runner.store.host import HOSTNAME, PIDNS, pid_alive
from runner.store.records import RunEnd, RunRecord

__all__ = [
    "HOSTNAME",
    "MAX_FILE_ATTEMPTS",
    "MIGRATIONS_DIR",
    "ORPHAN_CLAIM_S",
    "PIDNS",
    "RunEnd",
    "RunRecord",
    "Store",
    "create_engine",
    "default_data_url",
    "normalise_url",
    "pid_alive",
]
