"""The run history: engine set-up, schema migration, and every SQL statement the engine runs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from runner import jsonsafe
from runner.config import DEFAULT_LOCK_TIMEOUT_S, format_duration
from runner.errors import AlreadyRan, DatabaseBusy, DatabaseError, RunnerError, StorageError
from runner.models import (
    ACTIVE_STATUSES,
    SCHEMA_REVISION,
    ClaimState,
    RunStatus,
    SkipReason,
    daemons,
    file_claims,
    job_state,
    leases,
    runs,
    utcnow,
)
from runner.private import FILE_MODE as PRIVATE_FILE_MODE
from runner.private import FOLDER_MODE as PRIVATE_DIR_MODE

MAX_FILE_ATTEMPTS = 3  # a file whose runs failed this often is left alone (state 'failed')
ORPHAN_CLAIM_S = 120.0  # a claim whose run never appeared is released after this long
SCHEMA_LOCK_ID = 7_270_001  # PostgreSQL advisory lock taken while migrating
HOSTNAME = socket.gethostname()
PG_CONNECT_TIMEOUT_S = 10
PG_WAIT_S = 5  # on PostgreSQL, how long a non-waiting write may still wait for the server


# The hot path (a claim before every run, a finish after it) reuses these statements: building a
# statement anew costs more than running it on SQLite.
_INSERT_RUN = sa.insert(runs).returning(runs.c.id)
_UPDATE_RUN = sa.update(runs).where(runs.c.id == sa.bindparam("b_run_id"))
_SELECT_LEASE = sa.select(leases).where(leases.c.job == sa.bindparam("b_job"))
_INSERT_LEASE = sa.insert(leases)
_RELEASE_LEASE = sa.delete(leases).where(
    leases.c.job == sa.bindparam("b_job"), leases.c.run_id == sa.bindparam("b_run_id")
)


class _QueueTimeout(Exception):
    """The writer queue's lock was not free within lock_timeout."""


class _WouldWait(Exception):
    """Another writer holds the database right now (for callers that would rather not wait)."""


class _LeaseRace(Exception):
    """Another run changed the lease between our read and our write; the transaction is retried."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    job: str
    fire_key: str
    trigger: str
    attempt: int
    first_run_id: int | None
    status: str
    late: bool
    scheduled_at: datetime | None
    queued_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    heartbeat_at: datetime | None
    exit_code: int | None
    signal: int | None
    error: str | None
    host: str
    pid: int
    log_path: str | None
    params: Any
    paths: Any
    result: Any
    pidns: str | None = None
    job_pid: int | None = None
    cgroup: str | None = None
    reason: str | None = None
    late_s: float | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.ended_at or utcnow()) - self.started_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        data["duration_s"] = self.duration_s
        return data


_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))


def _record(row: sa.Row) -> RunRecord:
    return RunRecord(**{name: row._mapping[name] for name in _RUN_FIELDS})


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the driver we ship), not psycopg2."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def sqlite3_error() -> type[Exception]:
    import sqlite3

    return sqlite3.Error


def default_data_url(url: str) -> str:
    """The job-data database for a history database: a SQLite file's sibling `NAME-jobs.db`;
    any other database holds both."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return url  # create_engine says what is wrong with it
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    path = Path(parsed.database)
    return parsed.set(
        database=str(path.with_name(f"{path.stem}-jobs{path.suffix or '.db'}"))
    ).render_as_string(hide_password=False)


def create_engine(
    url: str, *, autocheckpoint: bool = True, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> sa.Engine:
    url = normalise_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise DatabaseError(f"database = {url!r} is not a SQLAlchemy URL") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            try:
                _private_database_file(Path(parsed.database))
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create the folder of database {parsed.database}: {exc.strerror}; "
                    "check [runner] database"
                ) from None
        engine = sa.create_engine(
            parsed, connect_args={"timeout": lock_timeout_s}, json_serializer=jsonsafe.dumps
        )
        sa.event.listen(engine, "connect", partial(_sqlite_on_connect, lock_timeout_s=lock_timeout_s))
        if not autocheckpoint:
            sa.event.listen(engine, "connect", _sqlite_no_autocheckpoint)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    try:
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        return sa.create_engine(
            parsed, pool_pre_ping=True, connect_args=connect_args, json_serializer=jsonsafe.dumps
        )
    except sa.exc.NoSuchModuleError:
        raise DatabaseError(
            f"database = {parsed.render_as_string(hide_password=True)!r}: no such database kind "
            f"{parsed.drivername!r}; expected sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    except ModuleNotFoundError as exc:
        raise DatabaseError(
            f"the driver for {parsed.get_backend_name()} is not installed ({exc.name}); "
            "for PostgreSQL run: pip install 'backend-runner[postgres]'"
        ) from None


def _private_database_file(path: Path) -> None:
    """Create the database file (and its folder) private before SQLite does: SQLite gives its
    -wal and -shm files the database file's mode. Files of an older version are made private."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=PRIVATE_DIR_MODE, exist_ok=True)
    with contextlib.suppress(OSError):  # an unwritable folder: SQLite's own error says so
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    for suffix in ("", "-wal", "-shm", "-writers.lock"):
        with contextlib.suppress(OSError):
            info = os.stat(f"{path}{suffix}")
            if info.st_mode & 0o077 and info.st_uid == os.getuid():
                os.chmod(f"{path}{suffix}", PRIVATE_FILE_MODE)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any, *, lock_timeout_s: float) -> None:
    # Let us issue BEGIN ourselves (see _sqlite_on_begin), then set up WAL for concurrent runs.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(lock_timeout_s * 1000)}")
    _sqlite_wal(cursor, lock_timeout_s)
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_wal(cursor: Any, lock_timeout_s: float) -> None:
    """Switch a new database to WAL (the mode is kept in the file, so this is once per database).

    The switch needs the database to itself and SQLite does not wait for that: it answers
    "database is locked" at once while another process is creating the same new database. Those
    first moments are short, so we try again until `lock_timeout` has passed."""
    import sqlite3

    deadline = time.monotonic() + lock_timeout_s
    nap_s = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(nap_s)
        nap_s = min(nap_s * 2, 0.05)


def _sqlite_no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    # The commit that crosses the WAL's checkpoint threshold would copy and fsync the database
    # while every queued writer waits; the daemon checkpoints from its heartbeat instead.
    dbapi_connection.execute("PRAGMA wal_autocheckpoint = 0")


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so a read never has to be upgraded to a
    # write mid-transaction: that upgrade is what fails with "database is locked" under load.
    # Read-only transactions (Store.read) take no lock at all.
    if conn.get_execution_options().get("runner_read_only"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """One run-history database. Cheap to create; the schema is checked on first use."""

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
        self._pid = os.getpid()
        database = sa.engine.make_url(self.url).database
        self._file = (
            Path(database) if self.url.startswith("sqlite") and database and database != ":memory:" else None
        )
        self._queue = (
            _WriterQueue(Path(f"{self._file}-writers.lock"), lock_timeout_s, self._busy)
            if self._file is not None
            else None
        )

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
        """Create or upgrade the schema when it is not at our revision (cheap when it is)."""
        self._check_fork()
        if self._schema_checked:
            return
        if self.schema_revision() != SCHEMA_REVISION:
            self.upgrade()
        self._schema_checked = True

    def upgrade(self) -> tuple[str | None, str | None]:
        """Run Alembic's upgrade to head under a lock, so concurrent first runs migrate once: the
        writer queue and SQLite's write lock, or an advisory lock on PostgreSQL. Whoever comes
        second finds the schema at head inside its transaction and changes nothing."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        before = self.schema_revision()
        try:
            with self._transaction() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except sa.exc.DBAPIError as exc:
            raise self.fault(exc) from None
        self._schema_checked = True
        return before, self.schema_revision()

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
            holders = lock_holders(
                Path(f"{self._file}{suffix}") for suffix in ("", "-wal", "-shm", "-writers.lock")
            )
        held_by = f"held by {', '.join(holders)}" if holders else "held by another process"
        return DatabaseBusy(
            f"database {shown} is locked: {held_by} for more than {format_duration(self.lock_timeout_s)}; "
            "try again when it is done, or raise [runner] lock_timeout"
        )

    @contextlib.contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """One write transaction; a database failure becomes a one-line StorageError."""
        self.ensure_schema()
        try:
            with self._transaction() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise self.fault(exc) from None

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only transaction: no writer queue and no write lock, so it never waits behind a
        writer (SQLite's WAL readers see the last committed state)."""
        self.ensure_schema()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(runner_read_only=True)
                with conn.begin():
                    yield conn
        except sa.exc.OperationalError as exc:
            raise self.fault(exc) from None

    @contextlib.contextmanager
    def _begin_now(self) -> Iterator[sa.Connection]:
        """A write transaction only if no other writer holds the database now; else _WouldWait."""
        self.ensure_schema()
        if self._queue is None:
            with self.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{PG_WAIT_S}s'")
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = '{PG_WAIT_S}s'")
                yield conn
            return
        if not self._queue.try_lock():
            raise _WouldWait
        try:
            with self.engine.connect() as conn:
                sqlite = conn.connection.driver_connection  # outside any transaction of SQLAlchemy's
                sqlite.execute("PRAGMA busy_timeout = 0")
                try:
                    with conn.begin():
                        yield conn
                except sa.exc.OperationalError as exc:
                    if "locked" in str(exc):
                        raise _WouldWait from None
                    raise self.fault(exc) from None
                finally:
                    sqlite.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout_s * 1000)}")
        finally:
            self._queue.unlock()

    def _transaction(self) -> contextlib.AbstractContextManager[sa.Connection]:
        if self._rollback_only:
            return _rolled_back(self.engine)
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
                release_lease_of="__warm_up__",
                status=RunStatus.SUCCEEDED.value,
                ended_at=utcnow(),
            )
            self.state_get("__warm_up__", "key")
        finally:
            self._rollback_only = False
            if not keep_connection:
                self.engine.dispose()

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

    def _adopt_job_tables_from(self, history: Store) -> None:
        """Once, when the job-data file is new: bring over the rows an older version kept in the
        history database (job state, and the tables of shipped jobs)."""
        if history._file is None or not history._file.exists():
            return
        raw = self.engine.raw_connection()
        try:
            db = raw.driver_connection
            db.execute("ATTACH DATABASE ? AS history", (str(history._file),))
            try:
                names = {row[0] for row in db.execute("SELECT name FROM history.sqlite_master")}
                db.execute("BEGIN IMMEDIATE")
                for table in ("job_state", "images"):  # images: the ingest job's, from revision 0004
                    if table not in names:
                        continue
                    mine = db.execute("SELECT 1 FROM main.sqlite_master WHERE name = ?", (table,))
                    if mine.fetchone() is None:  # a job's own table: its layout comes along
                        ddl = db.execute(
                            "SELECT sql FROM history.sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
                            "ORDER BY type = 'index'",
                            (table,),
                        )
                        for (statement,) in ddl.fetchall():
                            db.execute(statement)
                    # INSERT OR IGNORE: two processes may both get here
                    db.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM history.{table}")
                db.execute("COMMIT")
            finally:
                db.execute("DETACH DATABASE history")
        except sqlite3_error() as exc:
            raise self.fault(exc) from None
        finally:
            raw.close()

    # --- runs ---------------------------------------------------------------------------------
    def claim(
        self,
        *,
        job: str,
        fire_key: str,
        trigger: str,
        attempt: int = 1,
        first_run_id: int | None = None,
        params: Any = None,
        paths: Any = None,
        scheduled_at: datetime | None = None,
        late: bool = False,
        lease_ttl_s: float | None = None,
        status: RunStatus = RunStatus.RUNNING,
        error: str | None = None,
        reason: str | None = None,
        late_s: float | None = None,
    ) -> tuple[int, RunRecord | None]:
        """Insert the run row and, with `lease_ttl_s`, take the job's overlap lease, in one transaction.

        The unique (job, fire_key) of first attempts makes each fire run once: a second claim raises
        AlreadyRan. Returns (run id, None) when the run may start, or (run id, holder) when another
        run holds the lease; the row is then 'queued' and the caller skips or waits.
        """
        now = utcnow()
        values = dict(
            job=job,
            fire_key=fire_key,
            trigger=trigger,
            attempt=attempt,
            first_run_id=first_run_id,
            status=str(status),
            late=late,
            scheduled_at=scheduled_at,
            queued_at=now,
            heartbeat_at=now,
            started_at=now if status is RunStatus.RUNNING else None,
            ended_at=None if status.active else now,
            error=error,
            host=HOSTNAME,
            pid=os.getpid(),
            pidns=PIDNS,
            params=params,
            paths=paths,
            reason=reason,
            late_s=late_s,
        )
        for _ in range(5):
            try:
                with self.begin() as conn:
                    run_id = conn.execute(_INSERT_RUN, values).scalar_one()
                    # A first attempt is its own first run: one query groups a fire's attempts.
                    update: dict[str, Any] = {"first_run_id": first_run_id or run_id}
                    holder = None
                    if lease_ttl_s is not None:
                        holder = self._take_lease(conn, job, run_id, lease_ttl_s, now)
                        if holder is not None:
                            update.update(status=RunStatus.QUEUED.value, started_at=None)
                    conn.execute(_UPDATE_RUN, {"b_run_id": run_id, **update})
                    return run_id, holder
            except _LeaseRace:
                continue
            except sa.exc.IntegrityError:
                existing = self.find_fire(job, fire_key)
                if existing is None:
                    continue  # the lease insert raced with another claim: try again
                what = f"run {existing.id} ({existing.status})" if existing else "another run"
                raise AlreadyRan(f"job {job}: fire {fire_key} already ran as {what}; not started") from None
        raise DatabaseError(f"could not take the overlap lease of job {job}: too much contention")

    def record_skipped(
        self, job: str, trigger: str, fires: list[tuple[str, datetime | None]], reason: str, error: str
    ) -> int:
        """One `skipped` row per (fire key, scheduled time) nobody will run, in one transaction; a
        fire that already has a row (somebody ran it after all) is left as it is. Returns rows added."""
        if not fires:
            return 0
        now = utcnow()
        rows = [
            dict(
                job=job,
                fire_key=key,
                trigger=trigger,
                attempt=1,
                status=RunStatus.SKIPPED.value,
                late=False,
                scheduled_at=at,
                queued_at=now,
                heartbeat_at=now,
                ended_at=now,
                error=error,
                reason=reason,
                host=HOSTNAME,
                pid=os.getpid(),
            )
            for key, at in fires
        ]
        with self.begin() as conn:
            insert = _dialect_insert(conn.dialect.name)(runs).on_conflict_do_nothing()
            added = conn.execute(insert.returning(runs.c.id), rows).scalars().all()
            if added:
                conn.execute(sa.update(runs).where(runs.c.id.in_(added)).values(first_run_id=runs.c.id))
        return len(added)

    def skipped_since(self, since: datetime) -> dict[str, dict[str, int]]:
        """Per job, how many fires were recorded skipped since `since`, by reason."""
        query = (
            sa.select(runs.c.job, runs.c.reason, sa.func.count())
            .where(runs.c.status == RunStatus.SKIPPED.value, runs.c.queued_at >= since)
            .group_by(runs.c.job, runs.c.reason)
        )
        found: dict[str, dict[str, int]] = {}
        with self.begin() as conn:
            for job, reason, count in conn.execute(query):
                found.setdefault(job, {})[reason or "other"] = count
        return found

    def stopped_retries(self) -> list[RunRecord]:
        """Retries a stop cut short before they started, not yet taken up again."""
        query = sa.select(runs).where(
            runs.c.reason == SkipReason.RETRY_STOPPED.value, runs.c.status == RunStatus.KILLED.value
        )
        with self.begin() as conn:
            return [_record(row) for row in conn.execute(query.order_by(runs.c.id))]

    def take_stopped_retry(self, run_id: int, note: str) -> bool:
        """Mark a stopped retry as resumed; False if another daemon took it first."""
        with self.begin() as conn:
            return bool(
                conn.execute(
                    sa.update(runs)
                    .where(runs.c.id == run_id, runs.c.reason == SkipReason.RETRY_STOPPED.value)
                    .values(reason=SkipReason.RETRY_RESUMED.value, error=note)
                ).rowcount
            )

    def find_fire(self, job: str, fire_key: str) -> RunRecord | None:
        with self.read() as conn:
            row = conn.execute(
                sa.select(runs).where(runs.c.job == job, runs.c.fire_key == fire_key, runs.c.attempt == 1)
            ).first()
        return _record(row) if row else None

    def update_run(self, run_id: int, **values: Any) -> None:
        with self.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(**values))

    def heartbeat(
        self, run_id: int, lease_job: str | None, ttl_s: float, *, wait: bool = True, **values: Any
    ) -> bool:
        """The run (and its lease) is alive; `values` are more columns of the run to record.

        With wait=False (the supervisor of a running job) nothing waits for another writer: a
        busy database means this beat is skipped (False) and the next one tries again."""
        now = utcnow()
        try:
            with self.begin() if wait else self._begin_now() as conn:
                conn.execute(sa.update(runs).where(runs.c.id == run_id).values(heartbeat_at=now, **values))
                if lease_job:
                    conn.execute(
                        sa.update(leases)
                        .where(leases.c.job == lease_job, leases.c.run_id == run_id)
                        .values(expires_at=now + timedelta(seconds=ttl_s))
                    )
        except _WouldWait:
            return False
        return True

    def get_run(self, run_id: int) -> RunRecord | None:
        with self.read() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        return _record(row) if row else None

    def history(self, job: str | None = None, status: str | None = None, limit: int = 20) -> list[RunRecord]:
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        if job:
            query = query.where(runs.c.job == job)
        if status:
            query = query.where(runs.c.status == status)
        with self.read() as conn:
            return [_record(row) for row in conn.execute(query)]

    def reap_lost(self, stale_after_s: float, *, wait: bool = True) -> list[int]:
        """Mark active runs lost whose supervisor is gone, once every process of the run is gone.

        Where the supervisor's pid can be checked (this host, this boot, this PID namespace), a
        dead pid decides at once, and what is left of the job (its cgroup, its process group) is
        killed first: a run is never lost while its job still runs. Elsewhere a heartbeat older
        than `stale_after` decides (the job process died with its supervisor: parent-death signal).
        The candidates are found with a read; the write lock is taken only when there is one.
        With wait=False (read-only commands) a busy database means: leave it to the next caller.
        """
        from runner.containment import kill_processes

        now = utcnow()
        stale_before = now - timedelta(seconds=stale_after_s)
        with self.read() as conn:
            active = conn.execute(
                sa.select(
                    runs.c.id,
                    runs.c.host,
                    runs.c.pid,
                    runs.c.pidns,
                    runs.c.heartbeat_at,
                    runs.c.job_pid,
                    runs.c.cgroup,
                ).where(runs.c.status.in_(ACTIVE_STATUSES))
            ).all()
        verdicts = []
        for run_id, host, pid, pidns, heartbeat_at, job_pid, cgroup in active:
            if host == HOSTNAME and pidns == PIDNS:
                if pid_alive(pid):
                    continue
                reason = f"supervisor (pid {pid} on {host}) is gone"
                if not kill_processes(Path(cgroup) if cgroup else None, job_pid):
                    continue  # its processes do not die (yet): not lost while they live
            elif heartbeat_at is not None and heartbeat_at < stale_before:
                reason = f"supervisor stopped reporting (last heartbeat {heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)"
            else:
                continue
            verdicts.append((run_id, reason))
        if not verdicts:
            return []
        lost = []
        try:
            with self.begin() if wait else self._begin_now() as conn:
                for run_id, reason in verdicts:
                    updated = conn.execute(
                        sa.update(runs)
                        .where(runs.c.id == run_id, runs.c.status.in_(ACTIVE_STATUSES))
                        .values(status=RunStatus.LOST.value, ended_at=now, error=reason)
                    ).rowcount
                    if updated:
                        lost.append(run_id)
                        conn.execute(sa.delete(leases).where(leases.c.run_id == run_id))
        except _WouldWait:
            return []
        return lost

    def last_scheduled(self) -> dict[str, datetime]:
        """Per job, the newest scheduled instant any run (or recorded miss) was for."""
        query = (
            sa.select(runs.c.job, sa.func.max(runs.c.scheduled_at))
            .where(runs.c.scheduled_at.is_not(None))
            .group_by(runs.c.job)
        )
        with self.read() as conn:
            return {job: _as_utc(at) for job, at in conn.execute(query) if at is not None}

    def active_runs(self) -> list[RunRecord]:
        with self.read() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.status.in_(ACTIVE_STATUSES)).order_by(runs.c.id))
            return [_record(row) for row in rows]

    def problems(self, limit: int = 10) -> list[RunRecord]:
        """The newest runs that did not succeed (including recorded missed fires)."""
        bad = ("failed", "timed_out", "killed", "lost", "skipped")
        query = sa.select(runs).where(runs.c.status.in_(bad)).order_by(runs.c.id.desc()).limit(limit)
        with self.read() as conn:
            return [_record(row) for row in conn.execute(query)]

    # --- file claims -------------------------------------------------------------------------
    def claim_files(self, job: str, fire_key: str, versions: list[tuple[str, int, int]]) -> list[str]:
        """Claim each (path, size, mtime_ns) not yet handed out; returns the paths now ours.

        The unique (job, path, size, mtime_ns) makes two daemons, a rescan and a duplicate
        event agree on one owner per file version; a version whose run failed is 'pending' and
        may be claimed again, MAX_FILE_ATTEMPTS times in all.
        """
        if not versions:
            return []
        now = utcnow()
        rows = [
            {
                "job": job,
                "path": p,
                "size": size,
                "mtime_ns": mtime,
                "fire_key": fire_key,
                "state": ClaimState.CLAIMED.value,
                "attempts": 1,
                "claimed_at": now,
                "host": HOSTNAME,
                "pid": os.getpid(),
                "pidns": PIDNS,
            }
            for p, size, mtime in versions
        ]
        with self.begin() as conn:
            insert = _dialect_insert(conn.dialect.name)(file_claims).on_conflict_do_nothing()
            conn.execute(insert, rows)
            conn.execute(
                sa.update(file_claims)
                .where(
                    file_claims.c.job == job,
                    file_claims.c.path == sa.bindparam("b_path"),
                    file_claims.c.size == sa.bindparam("b_size"),
                    file_claims.c.mtime_ns == sa.bindparam("b_mtime"),
                    file_claims.c.state == ClaimState.PENDING.value,
                )
                .values(
                    state=ClaimState.CLAIMED.value,
                    fire_key=fire_key,
                    claimed_at=now,
                    attempts=file_claims.c.attempts + 1,
                    host=HOSTNAME,
                    pid=os.getpid(),
                    pidns=PIDNS,
                ),
                [{"b_path": p, "b_size": size, "b_mtime": mtime} for p, size, mtime in versions],
            )
            claimed = conn.execute(
                sa.select(file_claims.c.path)
                .where(
                    file_claims.c.job == job,
                    file_claims.c.fire_key == fire_key,
                    file_claims.c.state == ClaimState.CLAIMED.value,
                )
                .order_by(file_claims.c.path)  # a run walks its files in name order, every time
            )
            return [row[0] for row in claimed]

    def ack_files(self, job: str, fire_key: str, paths: list[str]) -> None:
        """These files of the run are processed, whatever happens to the rest of it."""
        self._mark_files(job, fire_key, paths, ClaimState.DONE)

    def _mark_files(
        self, job: str, fire_key: str, paths: list[str], state: ClaimState, *, only_claimed: bool = False
    ) -> None:
        """Give these files of the fire their final state (done or vanished), one statement."""
        if not paths:
            return
        where = [
            file_claims.c.job == job,
            file_claims.c.fire_key == fire_key,
            file_claims.c.path == sa.bindparam("b_path"),
        ]
        if only_claimed:
            where.append(file_claims.c.state == ClaimState.CLAIMED.value)
        with self.begin() as conn:
            conn.execute(
                sa.update(file_claims).where(*where).values(state=state.value, done_at=utcnow()),
                [{"b_path": p} for p in paths],
            )

    def done_files(self, job: str, fire_key: str) -> set[str]:
        """The files of this fire already processed (by an earlier attempt of it)."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(file_claims.c.path).where(
                    file_claims.c.job == job,
                    file_claims.c.fire_key == fire_key,
                    file_claims.c.state == ClaimState.DONE.value,
                )
            )
            return {row[0] for row in rows}

    def settle_files(
        self, job: str, fire_key: str, succeeded: bool, *, started: bool = True, blame: str | None = None
    ) -> None:
        """After the run: its files are done, or (not acknowledged, run failed) claimable again.
        A run that never started (overlap, already ran) does not count as an attempt; a failed run
        that was on file `blame` (ctx.files()) counts an attempt for that file only."""
        now = utcnow()
        mine = (
            (file_claims.c.job == job)
            & (file_claims.c.fire_key == fire_key)
            & (file_claims.c.state == ClaimState.CLAIMED.value)
        )
        with self.begin() as conn:
            if succeeded:
                conn.execute(
                    sa.update(file_claims).where(mine).values(state=ClaimState.DONE.value, done_at=now)
                )
                return
            untouched = mine if blame is None else mine & (file_claims.c.path != blame)
            if not started or blame is not None:  # claiming counted an attempt: take it back
                conn.execute(
                    sa.update(file_claims)
                    .where(untouched)
                    .values(state=ClaimState.PENDING.value, attempts=file_claims.c.attempts - 1)
                )
                if not started:
                    return
            conn.execute(
                sa.update(file_claims)
                .where(mine)
                .values(
                    state=sa.case(
                        (file_claims.c.attempts >= MAX_FILE_ATTEMPTS, ClaimState.FAILED.value),
                        else_=ClaimState.PENDING.value,
                    )
                )
            )

    def release_orphan_claims(self, job: str) -> tuple[int, int]:
        """Claims left behind by a run that ended badly without settling them (its supervisor was
        killed), or whose run never started because the claiming daemon died: make them claimable
        again. Returns (fires released, fires still held by a live run or claimant)."""
        now = utcnow()
        with self.read() as conn:
            open_claims = conn.execute(
                sa.select(
                    file_claims.c.fire_key,
                    file_claims.c.host,
                    file_claims.c.pid,
                    file_claims.c.pidns,
                    sa.func.min(file_claims.c.claimed_at),
                )
                .where(file_claims.c.job == job, file_claims.c.state == ClaimState.CLAIMED.value)
                .group_by(file_claims.c.fire_key, file_claims.c.host, file_claims.c.pid, file_claims.c.pidns)
            ).all()
        released = held = 0
        for fire_key, host, pid, pidns, claimed_at in open_claims:
            with self.read() as conn:
                run = conn.execute(
                    sa.select(runs.c.status)
                    .where(runs.c.job == job, runs.c.fire_key == fire_key)
                    .order_by(runs.c.attempt.desc())
                    .limit(1)
                ).first()
            if run is None:
                claimant_gone = host == HOSTNAME and pidns == PIDNS and not pid_alive(pid)
                if not claimant_gone and (now - _as_utc(claimed_at)).total_seconds() < ORPHAN_CLAIM_S:
                    held += 1
                    continue
            elif run.status in ACTIVE_STATUSES:
                held += 1
                continue
            self.settle_files(
                job, fire_key, succeeded=run is not None and run.status == RunStatus.SUCCEEDED.value
            )
            released += 1
        return released, held

    def list_files(self, job: str, state: str | None = None) -> list[dict[str, Any]]:
        """The job's file versions as claimed, oldest claim first (optionally of one state)."""
        query = sa.select(
            file_claims.c.path,
            file_claims.c.size,
            file_claims.c.mtime_ns,
            file_claims.c.state,
            file_claims.c.attempts,
            file_claims.c.fire_key,
            file_claims.c.claimed_at,
            file_claims.c.done_at,
        ).where(file_claims.c.job == job)
        if state:
            query = query.where(file_claims.c.state == state)
        with self.begin() as conn:
            rows = conn.execute(query.order_by(file_claims.c.claimed_at, file_claims.c.id)).mappings()
            return [dict(row) for row in rows]

    def retry_files(self, job: str, paths: list[str] | None = None) -> list[str]:
        """Failed files (all of the job's, or those of `paths`) become claimable again, with their
        attempts reset; returns the paths changed."""
        failed = (file_claims.c.job == job) & (file_claims.c.state == ClaimState.FAILED.value)
        if paths is not None:
            failed = failed & file_claims.c.path.in_(paths)
        with self.begin() as conn:
            changed = [row[0] for row in conn.execute(sa.select(file_claims.c.path).where(failed))]
            conn.execute(
                sa.update(file_claims).where(failed).values(state=ClaimState.PENDING.value, attempts=0)
            )
            return changed

    def mark_files_vanished(self, job: str, fire_key: str, paths: list[str]) -> None:
        """Claimed files deleted before the run could open them: never handed out, never retried."""
        self._mark_files(job, fire_key, paths, ClaimState.VANISHED, only_claimed=True)

    def file_states(self, job: str) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(
                sa.select(file_claims.c.state, sa.func.count())
                .where(file_claims.c.job == job)
                .group_by(file_claims.c.state)
            )
            return {state: count for state, count in rows}

    # --- daemons ------------------------------------------------------------------------------
    def register_daemon(self, config_path: str) -> int:
        now = utcnow()
        with self.begin() as conn:
            return conn.execute(
                sa.insert(daemons)
                .values(
                    host=HOSTNAME, pid=os.getpid(), config_path=config_path, started_at=now, heartbeat_at=now
                )
                .returning(daemons.c.id)
            ).scalar_one()

    def daemon_heartbeat(
        self, daemon_id: int, *, stopped: bool = False, queues: Any = None, notes: Any = None
    ) -> None:
        now = utcnow()
        values: dict[str, Any] = {"heartbeat_at": now}
        if stopped:
            values["stopped_at"] = now
        if queues is not None:
            values["queues"] = queues
        if notes is not None:
            values["notes"] = notes
        with self.begin() as conn:
            conn.execute(sa.update(daemons).where(daemons.c.id == daemon_id).values(**values))

    def last_daemon_beat(self) -> datetime | None:
        """The last moment any daemon on this database was known to be scheduling."""
        with self.begin() as conn:
            at = conn.execute(sa.select(sa.func.max(daemons.c.heartbeat_at))).scalar()
        return _as_utc(at) if at is not None else None

    def daemons(self, alive_within_s: float) -> list[dict[str, Any]]:
        """Daemons that have not stopped and reported within the window, newest first."""
        since = utcnow() - timedelta(seconds=alive_within_s)
        query = (
            sa.select(daemons)
            .where(daemons.c.stopped_at.is_(None), daemons.c.heartbeat_at >= since)
            .order_by(daemons.c.id.desc())
        )
        with self.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # --- overlap leases -----------------------------------------------------------------------
    def acquire_lease(self, job: str, run_id: int, ttl_s: float) -> RunRecord | None:
        """Take the job's lease for run_id; returns None on success, else the run holding it."""
        for _ in range(5):
            try:
                with self.begin() as conn:
                    holder = self._take_lease(conn, job, run_id, ttl_s, utcnow())
                    if holder is None:
                        conn.execute(
                            sa.update(runs)
                            .where(runs.c.id == run_id)
                            .values(status=RunStatus.RUNNING.value, started_at=utcnow())
                        )
                    return holder
            except (_LeaseRace, sa.exc.IntegrityError):
                pass  # another run took the lease first: read it again
        raise DatabaseError(f"could not take the overlap lease of job {job}: too much contention")

    @staticmethod
    def _take_lease(
        conn: sa.Connection, job: str, run_id: int, ttl_s: float, now: datetime
    ) -> RunRecord | None:
        """Every write is a compare-and-swap (insert of a new key, or update of the exact lease
        row we read), so two hosts racing on PostgreSQL cannot both win."""
        values = dict(
            job=job,
            run_id=run_id,
            host=HOSTNAME,
            pid=os.getpid(),
            expires_at=now + timedelta(seconds=ttl_s),
        )
        holder = conn.execute(_SELECT_LEASE, {"b_job": job}).first()
        if holder is None:
            conn.execute(_INSERT_LEASE, values)
            return None
        held_by = conn.execute(sa.select(runs).where(runs.c.id == holder.run_id)).first()
        if holder.expires_at >= now and held_by and held_by.status in ACTIVE_STATUSES:
            return _record(held_by)
        swapped = conn.execute(
            sa.update(leases)
            .where(
                leases.c.job == job,
                leases.c.run_id == holder.run_id,
                leases.c.expires_at == holder.expires_at,
            )
            .values(**values)
        ).rowcount
        if not swapped:
            raise _LeaseRace
        return None

    def move_lease(self, job: str, from_run_id: int, to_run_id: int) -> None:
        """Hand the lease to the next attempt of the same fire."""
        with self.begin() as conn:
            conn.execute(
                sa.update(leases)
                .where(leases.c.job == job, leases.c.run_id == from_run_id)
                .values(run_id=to_run_id)
            )

    def release_lease(self, job: str, run_id: int) -> None:
        with self.begin() as conn:
            conn.execute(sa.delete(leases).where(leases.c.job == job, leases.c.run_id == run_id))

    def finish(self, run_id: int, *, release_lease_of: str | None = None, **values: Any) -> None:
        """Record how a run ended (and give up the job's lease) in one transaction."""
        with self.begin() as conn:
            conn.execute(_UPDATE_RUN, {"b_run_id": run_id, **values})
            if release_lease_of:
                conn.execute(_RELEASE_LEASE, {"b_job": release_lease_of, "b_run_id": run_id})

    def finish_late(self, run_id: int, *, release_lease_of: str | None = None, **values: Any) -> bool:
        """Record an outcome kept while the database was away, unless the run was finished since
        (a run marked lost meanwhile gets its true outcome). True when written."""
        unfinished = (*ACTIVE_STATUSES, RunStatus.LOST.value)
        with self.begin() as conn:
            updated = conn.execute(
                sa.update(runs).where(runs.c.id == run_id, runs.c.status.in_(unfinished)).values(**values)
            ).rowcount
            if release_lease_of:
                conn.execute(_RELEASE_LEASE, {"b_job": release_lease_of, "b_run_id": run_id})
        return bool(updated)

    # --- per-job state ------------------------------------------------------------------------
    def state_get(self, job: str, key: str, default: Any = None, conn: sa.Connection | None = None) -> Any:
        """Inside a transaction (`conn`) the row is locked until it ends (FOR UPDATE on
        PostgreSQL; SQLite's write transactions hold the whole database), so a read followed by a
        write of the same key is atomic."""
        query = sa.select(job_state.c.value).where(job_state.c.job == job, job_state.c.key == key)
        if conn is not None:
            if conn.dialect.name == "postgresql":
                # A key not written yet has no row to lock: a lock on the key's name (held until the
                # transaction ends) makes first writers take turns too.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"{job}\x1f{key}"))))
                query = query.with_for_update()
            row = conn.execute(query).first()
        else:
            with self.read() as own:
                row = own.execute(query).first()
        return default if row is None else row[0]

    def state_set(self, job: str, key: str, value: Any, conn: sa.Connection | None = None) -> None:
        if conn is None:
            with self.begin() as own:
                return self.state_set(job, key, value, own)
        now = utcnow()
        # One upsert: two runs writing the same new key at once must not collide on the key.
        insert = _dialect_insert(conn.dialect.name)(job_state).values(
            job=job, key=key, value=value, updated_at=now
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[job_state.c.job, job_state.c.key],
                set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
            )
        )
        return None

    def state_update(
        self, job: str, key: str, change: Any, default: Any = None, conn: sa.Connection | None = None
    ) -> Any:
        """Atomically replace the value with change(old value or default); returns the new value.
        Two runs updating one key at once both count: the second waits for the first."""
        if conn is None:
            with self.begin() as own:
                return self.state_update(job, key, change, default, own)
        missing = object()
        current = self.state_get(job, key, missing, conn)
        value = change(default if current is missing else current)
        self.state_set(job, key, value, conn)
        return value

    def state_delete(self, job: str, key: str, conn: sa.Connection | None = None) -> None:
        statement = sa.delete(job_state).where(job_state.c.job == job, job_state.c.key == key)
        if conn is not None:
            conn.execute(statement)
        else:
            with self.begin() as own:
                own.execute(statement)

    def state_items(self, job: str) -> dict[str, Any]:
        with self.read() as conn:
            rows = conn.execute(sa.select(job_state.c.key, job_state.c.value).where(job_state.c.job == job))
            return {key: value for key, value in rows}

    def file_identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the SQLite file at the database's path now; None when there is no
        file there (or the database is not a file)."""
        if self._file is None:
            return None
        try:
            info = os.stat(self._file)
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def file_replaced(self, identity: tuple[int, int] | None) -> str | None:
        """Why the file at the database's path is no longer the one whose identity was taken when
        it was opened (deleted, or another file moved over it), or None while it is the same."""
        if self._file is None or identity is None:
            return None
        now = self.file_identity()
        if now == identity:
            return None
        if now is None:
            return f"database file {self._file} was deleted while in use"
        return (
            f"database file {self._file} was replaced while in use "
            f"(inode {identity[1]} on device {identity[0]}, now inode {now[1]} on device {now[0]})"
        )

    def drop_old_wal(self) -> list[str]:
        """After the database file was deleted or replaced while in use: the -wal and -shm files at
        its path are the old file's, and SQLite would replay that log into the new file when it
        next opens it. Remove them, once no process of ours uses the old file any more."""
        removed = []
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self._file}{suffix}")
                removed.append(f"{self._file}{suffix}")
        return removed

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database without blocking writers (PASSIVE)."""
        if not self.url.startswith("sqlite"):
            return
        raw = self.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            raw.close()

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


def _dialect_insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _as_utc(value: datetime) -> datetime:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class _WriterQueue:
    """Writers to one SQLite file take turns on a lock file before BEGIN IMMEDIATE.

    SQLite's own busy handler polls with sleeps of up to 100 ms, which is what a busy moment's
    slowest runs wait; flock() wakes the next writer here the moment the lock is free. SQLite's
    locking still guards correctness: a writer that does not queue (another program, a job
    process) is merely slower. A writer gives up after `lock_timeout` with DatabaseBusy.
    """

    def __init__(self, path: Path, timeout_s: float, busy: Any) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._busy = busy
        self._fd: int | None = None
        self._pid = 0
        self._depth = 0
        self._thread_lock = threading.RLock()
        queue = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (alive := queue()) is not None and alive._forget_parent())

    def _forget_parent(self) -> None:
        """In a forked child: close the parent's lock file. The child shares its open file, and
        with it the parent's lock: a daemon killed mid-write left the lock held by its fork server
        and workers, which then waited for it until lock_timeout."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._pid, self._depth = None, 0, 0

    @contextlib.contextmanager
    def begin(self, engine: sa.Engine) -> Iterator[sa.Connection]:
        with self._thread_lock:
            self._own_fd()
            if self._depth == 0:
                self._lock()
            self._depth += 1
            try:
                with engine.begin() as conn:
                    yield conn
            finally:
                self._depth -= 1
                if self._depth == 0:
                    import fcntl

                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def try_lock(self) -> bool:
        """Take the queue's lock only if it is free now (outside any begin() of this process)."""
        import fcntl

        self._thread_lock.acquire()
        try:
            self._own_fd()
        except StorageError:
            self._thread_lock.release()
            raise
        if self._depth:
            self._depth += 1
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._thread_lock.release()
            return False
        self._depth = 1
        return True

    def unlock(self) -> None:
        import fcntl

        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def _own_fd(self) -> None:
        """This process's own descriptor of the lock file (a forked child must not share the
        parent's: it would share the parent's lock)."""
        if self._pid != os.getpid():
            self._fd = self._open()
            self._pid, self._depth = os.getpid(), 0

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except OSError as exc:  # a read-only or full file system, a folder we may not write
            raise StorageError(
                f"cannot write beside database {self.path.parent}: {exc.strerror}; "
                "check the file system and the folder's permissions"
            ) from None

    def _lock(self) -> None:
        """flock(), bounded by `lock_timeout`. Waiters block in the kernel, which hands the lock
        on the moment it is free (polling with naps instead made a busy daemon's fires convoy:
        p99 lateness 40 ms -> 1.4 s in bench/dispatch.py). In a main thread the bound is an
        interval timer; other threads of runner's own processes hold the lock only for short
        transactions of runner's own and wait without one. Job processes never queue here (see
        after_fork), so a job's own signal handling is never touched."""
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if threading.current_thread() is not threading.main_thread():
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            return

        def give_up(_signum: int, _frame: Any) -> None:
            raise _QueueTimeout

        previous = signal.signal(signal.SIGALRM, give_up)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except _QueueTimeout:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # in case the timer fired just after we got it
            raise self._busy() from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _rolled_back(engine: sa.Engine) -> Iterator[sa.Connection]:
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            yield conn
        finally:
            transaction.rollback()


def pid_alive(pid: int) -> bool:
    """Is this pid (in our PID namespace) a living process? A zombie is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


def _pid_namespace() -> str:
    """Where a pid means something: this boot of this machine, this PID namespace. Two processes
    with the same host name (containers sharing the host's network) differ here."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown-boot"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{boot}/{namespace}"[:80]


PIDNS = _pid_namespace()
