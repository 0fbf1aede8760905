"""The Store: one run-history database. Its engine, schema migration, transactions (the writer
queue, read-only reads, writes that would rather not wait), failures as one-line errors, the
job-data database beside it, and what a fork or a replaced SQLite file needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from runner.durations import format_duration
from runner.errors import DatabaseBusy, RunnerError, SchemaTooNew, StorageError
from runner.models import SCHEMA_REVISION, RunStatus, schema_upgrades, utcnow
from runner.settings import DEFAULT_LOCK_TIMEOUT_S
from runner.store.daemons import Daemons
from runner.store.engine import (
    SQLITE_SIDE_FILES,
    create_engine,
    default_data_url,
    normalise_url,
    rolled_back,
    unavailable,
)
from runner.store.files import FileClaims
from runner.store.history import HistoryQueries
from runner.store.leases import Leases
from runner.store.notices import Notices
from runner.store.prune import RunPruning
from runner.store.queue import WouldWait, WriterQueue
from runner.store.records import RunEnd
from runner.store.runs import RunWrites
from runner.store.sqlite_file import SqliteFile
from runner.store.state import StateEntries
from runner.store.totals import RunTotals

if TYPE_CHECKING:
    from runner.store.fireclaim import FireClaim

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"
SCHEMA_LOCK_ID = 7_270_001  # PostgreSQL advisory lock taken while migrating
PG_WAIT_S = 5  # on PostgreSQL, how long a non-waiting write may still wait for the server


class Store(RunWrites, HistoryQueries, SqliteFile):
    """One run-history database. Cheap to create; the schema is checked on first use.

    Runs are its own (`store.claim`, `store.finish`, `store.history`, ...: runs.py, history.py),
    and so is its SQLite file (sqlite_file.py); the other tables have one small class each:
    `store.leases`, `store.files`, `store.daemons`, `store.state`, and `store.totals` (aggregates for metrics)."""

    def __init__(
        self,
        url: str,
        *,
        autocheckpoint: bool = True,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        data_url: str | None = None,
    ) -> None:
        self.url = normalise_url(url)
        self.lock_timeout_s = lock_timeout_s
        self.data_url = normalise_url(data_url) if data_url else default_data_url(self.url)
        self._job_data: Store | None = None
        self._job_process = False
        self.engine = create_engine(self.url, autocheckpoint=autocheckpoint, lock_timeout_s=lock_timeout_s)
        self._schema_checked = False
        self._rollback_only = False
        self._fire_claim: FireClaim | None = None  # the one-statement claim, made on first use
        self._pid = os.getpid()
        database = sa.engine.make_url(self.url).database
        self._file = (
            Path(database) if self.url.startswith("sqlite") and database and database != ":memory:" else None
        )
        self._queue = (
            WriterQueue(Path(f"{self._file}-writers.lock"), lock_timeout_s, self._busy)
            if self._file is not None
            else None
        )

    # --- the tables besides runs (made on each access: they hold nothing but the Store) ---------
    @property
    def leases(self) -> Leases:
        return Leases(self)

    @property
    def files(self) -> FileClaims:
        return FileClaims(self)

    @property
    def daemons(self) -> Daemons:
        return Daemons(self)

    @property
    def state(self) -> StateEntries:
        return StateEntries(self)

    @property
    def notices(self) -> Notices:
        return Notices(self)

    @property
    def totals(self) -> RunTotals:
        return RunTotals(self)

    @property
    def pruning(self) -> RunPruning:
        return RunPruning(self)

    # --- schema -------------------------------------------------------------------------------
    def schema_revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(runner_read_only=True)
                return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except sa.exc.OperationalError as exc:
            if "no such table" in str(exc).lower():
                return None
            raise self.fault(exc) from None
        except sa.exc.ProgrammingError:  # PostgreSQL: relation does not exist
            return None
        except sa.exc.DBAPIError as exc:
            raise self.fault(exc) from None

    def ensure_schema(self) -> None:
        """Create or upgrade the schema when it is not at our revision (cheap when it is). A
        database migrated by a newer runner is refused (SchemaTooNew) before anything is written."""
        self._check_fork()
        if self._schema_checked:
            return
        if self.schema_revision() != SCHEMA_REVISION:
            self.upgrade()
        self._schema_checked = True

    def check_schema_known(self, revision: str | None = None) -> str | None:
        """The schema revision, after making sure this runner knows it: SchemaTooNew if a newer
        runner migrated the database (the message names the version to install)."""
        revision = self.schema_revision() if revision is None else revision
        if revision is None or revision == SCHEMA_REVISION or revision in known_revisions():
            return revision
        from runner.version import __version__

        shown = sa.engine.make_url(self.url).render_as_string(hide_password=True)
        by = self._migrated_by(revision)
        if by is None:
            install = "install the runner version that migrated it, or a newer one"
            raise SchemaTooNew(
                f"database {shown} is at schema revision {revision}, newer than runner {__version__} "
                f"knows (its newest is {SCHEMA_REVISION}); {install}; nothing was written"
            )
        raise SchemaTooNew(
            f"database {shown} was migrated to schema revision {revision} by runner {by}; this is "
            f"runner {__version__}: install runner {by} or newer (pip install 'backend-runner>={by}'); "
            "nothing was written"
        )

    def _migrated_by(self, revision: str) -> str | None:
        """The runner version that migrated the database to `revision`, if one recorded it."""
        query = sa.select(schema_upgrades.c.revision, schema_upgrades.c.runner_version).order_by(
            schema_upgrades.c.id.desc()
        )
        try:
            with self.engine.connect() as conn:
                conn.execution_options(runner_read_only=True)
                rows = conn.execute(query).all()
        except sa.exc.DBAPIError:  # no such table: migrated by a runner that did not record it
            return None
        return next((version for rev, version in rows if rev == revision), None)

    def upgrade(self) -> tuple[str | None, str | None]:
        """Run Alembic's upgrade to head under a lock, so concurrent first runs migrate once: the
        writer queue and SQLite's write lock, or an advisory lock on PostgreSQL. Whoever comes
        second finds the schema at head inside its transaction and changes nothing. Each upgrade
        is recorded with our version in schema_upgrades (what an older runner names)."""
        before = self.check_schema_known()  # before Alembic is imported: it logs as it loads
        from alembic import command
        from alembic.config import Config

        from runner.version import __version__

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self._transaction() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
                config.attributes["connection"] = conn
                found = _revision_in(conn)
                if found is not None and found != before:  # another runner upgraded meanwhile
                    self.check_schema_known(found)
                command.upgrade(config, "head")
                if found != SCHEMA_REVISION:
                    conn.execute(
                        sa.insert(schema_upgrades).values(
                            revision=SCHEMA_REVISION, runner_version=__version__, upgraded_at=utcnow()
                        )
                    )
        except sa.exc.DBAPIError as exc:
            raise self.fault(exc) from None
        self._schema_checked = True
        return before, self.schema_revision()

    # --- failures -----------------------------------------------------------------------------
    def fault(self, exc: Exception) -> RunnerError:
        """The one-line error for a database failure, with the exit code of its kind."""
        shown = sa.engine.make_url(self.url).render_as_string(hide_password=True)
        first = (str(getattr(exc, "orig", exc)).strip().splitlines() or [type(exc).__name__])[0]
        lowered = first.lower()
        if "database is locked" in lowered or "database table is locked" in lowered:
            return self._busy()
        if "readonly" in lowered or "read-only" in lowered:
            return StorageError(
                f"cannot write to database {shown}: it is read-only; "
                "check the permissions of the file and its folder"
            )
        if "disk is full" in lowered or "no space left" in lowered:
            return StorageError(f"cannot write to database {shown}: the disk is full; free some space")
        return StorageError(
            f"cannot use database {shown}: {first}; check [runner] database and that the database is reachable"
        )

    def _busy(self) -> DatabaseBusy:
        from runner.lockinfo import lock_holders

        shown = sa.engine.make_url(self.url).render_as_string(hide_password=True)
        holders = []
        if self._file is not None:
            holders = lock_holders(Path(f"{self._file}{suffix}") for suffix in SQLITE_SIDE_FILES)
        held_by = f"held by {', '.join(holders)}" if holders else "held by another process"
        return DatabaseBusy(
            f"database {shown} is locked: {held_by} for more than {format_duration(self.lock_timeout_s)}; "
            "try again when it is done, or raise [runner] lock_timeout"
        )

    # --- transactions -------------------------------------------------------------------------
    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """The database failing us (runner.store.engine.unavailable: gone, reset, locked, full)
        becomes the one-line error of self.fault(); a statement it refused is raised as it is."""
        try:
            yield
        except sa.exc.DBAPIError as exc:
            if not unavailable(exc):
                raise
            raise self.fault(exc) from None

    @contextlib.contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """One write transaction; a database failure becomes a one-line StorageError."""
        self.ensure_schema()
        with self.failures(), self._transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction: no writer queue and no write lock, so it never waits behind a
        writer (SQLite's WAL readers see the last committed state)."""
        self.ensure_schema()
        with self.failures(), self.engine.connect() as conn:
            conn.execution_options(runner_read_only=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _begin_now(self) -> Iterator[sa.Connection]:
        """A write transaction only if no other writer holds the database now; else WouldWait."""
        self.ensure_schema()
        if self._queue is None:
            with self.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{PG_WAIT_S}s'")
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = '{PG_WAIT_S}s'")
                yield conn
            return
        if not self._queue.try_lock():
            raise WouldWait
        try:
            with self.engine.connect() as conn:
                sqlite = conn.connection.driver_connection  # outside any transaction of SQLAlchemy's
                sqlite.execute("PRAGMA busy_timeout = 0")
                try:
                    with conn.begin():
                        yield conn
                except sa.exc.OperationalError as exc:
                    if "locked" in str(exc):
                        raise WouldWait from None
                    raise self.fault(exc) from None
                finally:
                    sqlite.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout_s * 1000)}")
        finally:
            self._queue.unlock()

    def _transaction(self) -> contextlib.AbstractContextManager[sa.Connection]:
        if self._rollback_only:
            return rolled_back(self.engine)
        if self._queue is not None:
            return self._queue.begin(self.engine)
        return self.engine.begin()

    def warm_up(self, *, keep_connection: bool = False) -> None:
        """Run the hot path's statements once in transactions that roll back, so SQLAlchemy has
        compiled them (and a process about to be forked, or just forked, has touched the memory
        they use) before the first real fire; nothing is written."""
        self.ensure_schema()
        self._rollback_only = True
        try:
            run_id, _ = self.claim(job="__warm_up__", fire_key="warm-up", trigger="schedule", lease_ttl_s=1.0)
            self.heartbeat(run_id or 0, "__warm_up__", 1.0)
            self.finish(
                run_id or 0,
                RunEnd(status=RunStatus.SUCCEEDED, ended_at=utcnow()),
                release_lease_of="__warm_up__",
            )
            self.state.get("__warm_up__", "key")
            self.fire_claim()  # its statements, built
        finally:
            self._rollback_only = False
            if not keep_connection:
                self.engine.dispose()

    # --- the job-data database ----------------------------------------------------------------
    def job_data(self) -> Store:
        """Where jobs keep their own rows and `ctx.state`: the same database on PostgreSQL (row
        locks keep a job's long transaction away from the history), a second SQLite file beside
        the history otherwise, so a job holding its own write transaction for minutes never
        stalls the run history, its own supervisor, or other jobs' starts."""
        if self.data_url == self.url:
            self.ensure_schema()  # also: a forked child never reuses its parent's connections
            return self
        if self._job_data is None:
            path = Path(sa.engine.make_url(self.data_url).database or "")
            new = not path.exists() or path.stat().st_size == 0
            self._job_data = Store(  # jobs' writes checkpoint their own WAL
                self.data_url,
                lock_timeout_s=self.lock_timeout_s,
                data_url=self.data_url,
            )
            if self._job_process:
                self._job_data.after_fork(job_process=True)
            self._job_data.ensure_schema()
            if new:
                self._job_data._adopt_job_tables_from(self)
        self._job_data._check_fork()
        return self._job_data

    # --- forks --------------------------------------------------------------------------------
    def after_fork(self, *, job_process: bool = False) -> None:
        """In a forked child: never reuse the parent's pooled connections (done on first use). A
        job process does not queue for the write lock: its few writes (file acknowledgements) wait
        in SQLite's own busy handler, bounded by lock_timeout, and its signals stay its own."""
        self._pid = -1
        if job_process:
            self._queue = None
            self._job_process = True

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self.engine.dispose(close=False)
            self._pid = os.getpid()


def _revision_in(conn: sa.Connection) -> str | None:
    """The schema revision, read inside an open transaction (None: no schema yet)."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def known_revisions() -> set[str]:
    """Every revision our migrations define, from their `revision = "..."` lines (read only off
    the fast path; Alembic's own loader would log its set-up lines into a one-line refusal)."""
    import re

    pattern = re.compile(r"""^revision\s*=\s*["']([^"']+)["']""", re.MULTILINE)
    return {
        found.group(1)
        for path in (MIGRATIONS_DIR / "versions").glob("*.py")
        for found in pattern.finditer(path.read_text(encoding="utf-8"))
    }
