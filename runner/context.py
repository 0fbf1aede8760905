"""What a running job sees: `JobContext` (run id, fire, parameters, log, progress, state, database)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from runner.enums import Trigger

if TYPE_CHECKING:
    import sqlalchemy as sa

    from runner.store import Store

T = TypeVar("T")
PROGRESS_LOG_EVERY_S = 10.0
LIVE_BAR_EVERY_S = 0.1  # how often a bar on a terminal is redrawn
ACK_FLUSH_S = 0.5  # how often ctx.files() records the files finished so far
SLOW_FILE_S = 0.05  # a file that took longer is recorded at once


class _StopRequest:
    """In a job's process: a SIGTERM that arrives inside ctx.files() waits for the file boundary.
    The first ctx.files() tells the supervisor at once (on `report_fd`) that the job acknowledges
    files one by one, so a job that ends without returning (os._exit) settles only those."""

    deferring = False
    requested: int | None = None
    used_files = False
    report_fd: int | None = None  # the pipe to the supervisor: which file ctx.files() is on


def _report(record: dict[str, Any]) -> None:
    """One JSON line to the supervisor on the result pipe (no database round trip)."""
    if STOP.report_fd is not None:
        import json
        import os

        os.write(STOP.report_fd, json.dumps(record).encode() + b"\n")


def _report_file(path: str | None) -> None:
    """Tell the supervisor which file is being processed (None: the walk ended), so that a failing
    run charges an attempt to that file only."""
    _report({"file": path})


STOP = _StopRequest()


@dataclass(frozen=True, slots=True)
class Fire:
    """Why a run happened: the trigger kind, its idempotency key, when it was due, which files."""

    kind: Trigger
    key: str
    scheduled_at: datetime | None = None
    late: bool = False
    paths: tuple[Path, ...] = field(default_factory=tuple)
    due_at: datetime | None = None  # UTC: scheduled_at plus the jitter delay the daemon drew

    def __post_init__(self) -> None:
        # A kind read back from the history or a fork-server message is a plain string.
        object.__setattr__(self, "kind", Trigger(self.kind))


class JobState:
    """Small persistent key/value store of one job, kept in the job-data database (see
    `ctx.transaction()`).

    Values are anything JSON can hold. Outside `ctx.transaction()` each call is its own
    transaction: `get` then `set` is *not* atomic when two runs of the job overlap — use
    `update(key, fn)` or `incr(key)`, which are. Inside `with ctx.transaction():` every call joins
    that transaction by itself (no `conn=` needed), and `get` locks the key until it ends, so a
    cursor advances together with the data it covers and concurrent runs take turns.
    """

    def __init__(self, store: Store, job: str, current: Callable[[], sa.Connection | None]) -> None:
        self._history, self._job, self._current = store, job, current

    @property
    def _store(self) -> Store:
        return self._history.job_data()

    def get(self, key: str, default: Any = None, *, conn: sa.Connection | None = None) -> Any:
        return self._store.state.get(self._job, key, default, conn or self._current())

    def set(self, key: str, value: Any, *, conn: sa.Connection | None = None) -> None:
        self._store.state.set(self._job, key, value, conn or self._current())

    def update(
        self,
        key: str,
        change: Callable[[Any], Any],
        default: Any = None,
        *,
        conn: sa.Connection | None = None,
    ) -> Any:
        """Atomically set `key` to `change(current value, or default)`; returns the new value."""
        return self._store.state.update(self._job, key, change, default, conn or self._current())

    def incr(self, key: str, by: int | float = 1, *, conn: sa.Connection | None = None) -> Any:
        """Atomically add `by` to a number (a missing key counts as 0); returns the new value."""
        return self.update(key, lambda value: (value or 0) + by, conn=conn)

    def delete(self, key: str, *, conn: sa.Connection | None = None) -> None:
        self._store.state.delete(self._job, key, conn or self._current())

    def items(self) -> dict[str, Any]:
        return self._store.state.items(self._job)

    def __getitem__(self, key: str) -> Any:
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __contains__(self, key: object) -> bool:
        missing = object()
        return isinstance(key, str) and self.get(key, missing) is not missing


class JobContext:
    """Handed to a job function that declares a parameter named `ctx`."""

    def __init__(
        self,
        *,
        run_id: int,
        job: str,
        attempt: int,
        fire: Fire,
        params: Mapping[str, Any],
        store: Store,
        log: logging.Logger,
        tty: IO[str] | None = None,
        timezone: str = "UTC",
    ) -> None:
        self.run_id = run_id
        self.timezone = timezone  # IANA name: the job's schedule timezone ([runner] timezone by default)
        self.job = job
        self.attempt = attempt
        self.fire = fire
        self.params = dict(params)
        self.log = log
        self._conn: sa.Connection | None = None  # the open ctx.transaction(), if any
        self.state = JobState(store, job, lambda: self._conn)
        self._store = store
        self._tty = tty

    @property
    def engine(self) -> sa.Engine:
        """The job-data database's SQLAlchemy engine, for the job's own tables.

        On PostgreSQL it is the run history's database; with the embedded SQLite it is a second
        file beside it (`runner-jobs.db`), so a job's long write transaction never holds up the
        run history. `[runner] data_database` names another one."""
        return self._store.job_data().engine

    @contextlib.contextmanager
    def history(self) -> Iterator[sa.Connection]:
        """A read-only transaction on the run history (the `runs` table of `runner.models`), for
        reports. It takes no write lock and never waits for a writer."""
        with self._store.read() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One write transaction on the job-data database: write your rows and `ctx.state`
        together. Other jobs' writes to it wait for it (at most `lock_timeout` on SQLite)."""
        if self._conn is not None:  # nested: one transaction
            yield self._conn
            return
        with self._store.job_data().begin() as conn:
            self._conn = conn
            try:
                yield conn
            finally:
                self._conn = None

    def files(self) -> Iterator[Path]:
        """The files this run was handed (`ctx.fire.paths`), one at a time.

        Each file counts as processed when you ask for the next one (or the loop ends): if the
        run fails, times out or is stopped half-way, only the files not yet processed are handed
        out again, and a retry of the run skips the ones already done. Only the file being
        processed when the run failed counts a failed attempt; the others go back untouched.
        A stop request (SIGTERM) waits for the current file to finish.
        """
        done: list[str] = []
        last_flush = time.monotonic()
        finished_before = self._store.files.done(self.job, self.fire.key) if self.attempt > 1 else set()
        if not STOP.used_files:  # from now on, only the files acknowledged count as done
            _report({"acked_files_only": True})
        STOP.deferring = STOP.used_files = True
        try:
            for path in self.fire.paths:
                if str(path) in finished_before:  # an earlier attempt of this fire did it
                    continue
                if not path.exists():  # deleted since it was claimed: nothing to hand out
                    self._store.files.mark_vanished(self.job, self.fire.key, [str(path)])
                    continue
                handed_out = time.monotonic()
                _report_file(str(path))
                yield path
                done.append(str(path))
                now = time.monotonic()
                # Slow files are recorded one by one; fast ones in groups, at most ACK_FLUSH_S apart.
                if STOP.requested or now - handed_out >= SLOW_FILE_S or now - last_flush >= ACK_FLUSH_S:
                    last_flush = now
                    if self._ack(done, patience_s=0.0):  # the database is away: next time, with more
                        done = []
                if STOP.requested:
                    raise SystemExit(128 + STOP.requested)
            _report_file(None)
        finally:
            # Still deferring a stop: no half write. A database that is away (restarting) is
            # waited for up to lock_timeout, so files done are not handed out again.
            self._ack(done, patience_s=self._store.lock_timeout_s)
            STOP.deferring = False

    def _ack(self, done: list[str], *, patience_s: float) -> bool:
        """Record `done` as processed; False if the database failed it (patience_s = 0), else
        StorageError once `patience_s` has passed."""
        from runner.errors import StorageError
        from runner.outage import patiently

        try:
            patiently(lambda: self._store.files.ack(self.job, self.fire.key, done), patience_s)
        except StorageError:
            if patience_s:
                raise
            return False
        return True

    def _live_progress(self, items: Iterable[T], total: int | None, label: str) -> Iterator[T]:
        """On a terminal: the supervisor draws the bar under the run's log lines; we describe it."""
        from runner.terminal import render_bar

        started = last = time.monotonic()
        done = 0
        _report({"bar": render_bar(label, 0, total, 0.0)})
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= LIVE_BAR_EVERY_S:
                _report({"bar": render_bar(label, done, total, now - started)})
                last = now
        _report({"bar": render_bar(label, done, total, time.monotonic() - started), "finished": True})

    def progress(self, items: Iterable[T], total: int | None = None, label: str = "") -> Iterator[T]:
        """Iterate `items` showing progress: a bar on a terminal, a log line every 10 s otherwise."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        label = label or self.job
        if self._tty is not None and STOP.report_fd is not None:
            yield from self._live_progress(items, total, label)
            return
        started = last = time.monotonic()
        done = 0
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= PROGRESS_LOG_EVERY_S:
                last = now
                of = f"/{total} ({done * 100 // total}%)" if total else ""
                self.log.info("%s: %d%s done", label, done, of)
        self.log.info("%s: %d done in %.1fs", label, done, time.monotonic() - started)
