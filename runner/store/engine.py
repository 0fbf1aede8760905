"""Connecting to the database: URLs, the SQLAlchemy engine, and the SQLite settings every
connection gets (WAL, busy timeout, BEGIN IMMEDIATE for writes)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from runner import jsonsafe
from runner.errors import DatabaseError
from runner.private import FILE_MODE as PRIVATE_FILE_MODE
from runner.private import FOLDER_MODE as PRIVATE_DIR_MODE
from runner.settings import DEFAULT_LOCK_TIMEOUT_S

if TYPE_CHECKING:
    import sqlite3

    from sqlalchemy.pool import ConnectionPoolEntry

PG_CONNECT_TIMEOUT_S = 10
# A server that vanished without closing its connections (a fail-over, a pulled cable) is noticed
# in about 25 s by TCP keepalives, and unacknowledged writes give up after 30 s, instead of
# waiting for the kernel's defaults (hours). A key given in the URL's query wins.
PG_CONNECT_ARGS = {
    "connect_timeout": PG_CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms
}
PING_IDLE_S = 1.0  # a PostgreSQL connection unused this long is pinged before it is used again
SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-writers.lock")  # the database file and what SQLite and we add


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
        connect_args = {key: value for key, value in PG_CONNECT_ARGS.items() if key not in parsed.query}
        engine = sa.create_engine(parsed, connect_args=connect_args, json_serializer=jsonsafe.dumps)
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
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: sa.Engine) -> None:
    """SQLAlchemy's pool_pre_ping, but only for a connection unused for PING_IDLE_S: a server
    restarted while the connection sat in the pool is noticed before a statement fails on it,
    and a busy process (a claim loop, heartbeats) pays no extra round trip per statement. A
    connection that fails the ping is replaced (DisconnectionError makes the pool reconnect)."""

    @sa.event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["used_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkin")
    def _used(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["used_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        used_at = record.info.get("used_at")
        if used_at is not None and time.monotonic() - used_at < PING_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"the connection failed its ping: {exc}") from exc


def unavailable(exc: sa.exc.DBAPIError) -> bool:
    """The database failed us (gone, restarting, reset, locked, full), as opposed to refusing a
    statement (a unique key, a bug): SQLAlchemy flags a dropped connection `connection_invalidated`,
    psycopg raises OperationalError for the server going away and InterfaceError for a
    connection that is already closed."""
    return exc.connection_invalidated or isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))


def _private_database_file(path: Path) -> None:
    """Create the database file (and its folder) private before SQLite does: SQLite gives its
    -wal and -shm files the database file's mode. Files of an older version are made private."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=PRIVATE_DIR_MODE, exist_ok=True)
    with contextlib.suppress(OSError):  # an unwritable folder: SQLite's own error says so
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    for suffix in SQLITE_SIDE_FILES:
        with contextlib.suppress(OSError):
            info = os.stat(f"{path}{suffix}")
            if info.st_mode & 0o077 and info.st_uid == os.getuid():
                os.chmod(f"{path}{suffix}", PRIVATE_FILE_MODE)


def _sqlite_on_connect(
    dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry, *, lock_timeout_s: float
) -> None:
    # Let us issue BEGIN ourselves (see _sqlite_on_begin), then set up WAL for concurrent runs.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(lock_timeout_s * 1000)}")
    # A new file is made with incremental auto-vacuum (before WAL and the first table fix its
    # header), so that prune can hand freed pages back to the disk a few at a time. An existing
    # file keeps its mode (`runner db vacuum` converts it once), and is not asked: setting the
    # pragma on it would wait for a writer of another program, where a read never waits.
    if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
        cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
    _sqlite_wal(cursor, lock_timeout_s)
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_wal(cursor: sqlite3.Cursor, lock_timeout_s: float) -> None:
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


def _sqlite_no_autocheckpoint(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
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


def dialect_insert(dialect: str) -> Callable[[sa.Table], Any]:
    """The dialect's INSERT (it has ON CONFLICT), for upserts and insert-or-ignore. Its two
    classes share no base that has on_conflict_*, hence Any."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


@contextlib.contextmanager
def rolled_back(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that is always rolled back (the warm-up's)."""
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            yield conn
        finally:
            transaction.rollback()
