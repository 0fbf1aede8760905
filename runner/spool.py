"""Outcomes the database could not take when their run ended (server gone, disk full): kept as
private files in `var_dir/unrecorded/` and written to the history at the next chance, so a run
that finished is never reported `lost` because the database was away at that moment."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import StorageError

if TYPE_CHECKING:
    from runner.store import RunEnd, Store

log = logging.getLogger("runner.spool")

SPOOL_DIR = "unrecorded"
RECORD_RETRY_FIRST_S = 0.2
RECORD_RETRY_MAX_S = 2.0  # a database back from a restart gets the outcome within this
_DATETIME_KEYS = ("ended_at", "heartbeat_at", "started_at")


def record_outcome(
    store: Store,
    var_dir: Path,
    run_id: int,
    end: RunEnd,
    *,
    release_lease_of: str | None,
    patience_s: float,
) -> None:
    """store.finish(), tried again for up to `patience_s`; then the outcome is kept on disk and
    StorageError says where."""
    deadline = time.monotonic() + patience_s
    nap_s = RECORD_RETRY_FIRST_S
    while True:
        try:
            store.finish(run_id, end, release_lease_of=release_lease_of)
            return
        except StorageError as exc:
            if time.monotonic() + nap_s > deadline:
                path = keep(var_dir, run_id, end, release_lease_of)
                raise StorageError(
                    f"run {run_id} ended {end.status}, but the database did not take it "
                    f"({exc}); kept in {path}, recorded by the next runner command"
                ) from None
        time.sleep(nap_s)
        nap_s = min(nap_s * 2, RECORD_RETRY_MAX_S)


def keep(var_dir: Path, run_id: int, end: RunEnd, release_lease_of: str | None) -> Path:
    """The run's end columns as a private JSON file, written whole (renamed into place)."""
    from runner.private import private_folder, write_private

    folder = private_folder(var_dir / SPOOL_DIR)
    data = {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in end.columns().items()
    }
    final = folder / f"{run_id}.json"
    partial = folder / f".{run_id}.json.{os.getpid()}"
    write_private(
        partial, json.dumps({"run_id": run_id, "release_lease_of": release_lease_of, "values": data})
    )
    partial.rename(final)
    return final


def replay(var_dir: Path, store: Store) -> int:
    """Write every kept outcome whose run the history still shows unfinished (or lost because its
    supervisor went silent meanwhile); returns how many were written."""
    from runner.store import RunEnd

    folder = var_dir / SPOOL_DIR
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return 0  # the common case: nothing was ever kept
    written = 0
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = folder / name
        try:
            kept = json.loads(path.read_text())
            end = RunEnd.from_columns(
                {
                    key: datetime.fromisoformat(value) if key in _DATETIME_KEYS and value else value
                    for key, value in kept["values"].items()
                }
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the kept outcome %s: %s", path, exc)
            continue
        if store.finish_late(kept["run_id"], end, release_lease_of=kept.get("release_lease_of")):
            written += 1
            log.info("recorded the kept outcome of run %s (%s)", kept["run_id"], end.status)
        with contextlib.suppress(OSError):
            path.unlink()
    return written
