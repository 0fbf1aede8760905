"""A fire claimed in one statement: the run row and (for a loser) who has the fire, in one
autocommit round trip through the bare driver.

Every daemon on every host tries each fire; exactly one insert wins the unique (job, fire key). A
claim without an overlap lease needs nothing else in its transaction, so it is shaped like a raw
`INSERT ... ON CONFLICT DO NOTHING` (bench/claim.py compares the two): one statement, one commit,
no BEGIN; the id is the column's own and a first attempt's first_run_id is NULL (a retry names
its first attempt; readers take a NULL as the run's own id). A process whose claims lose (other
daemons try the same fires) expects to lose again. On PostgreSQL it sends the full statement,
which answers a loser in the same round trip with the winner's row and takes no sequence value
for a fire already committed, until it has won WINS_FOR_PLAIN claims in a row (one daemon
alone, a `runner run`): then it sends the plain insert and asks who has the fire only when it
lost after all. The full statement's lookup and UNION cost a tenth of a won claim
(bench/README.md). On SQLite, a process that lost its last claim reads before it writes.
SQLite's write lock is held only while SQLite runs the insert, never while Python runs. A claim
with a lease (overlap = skip or queue) takes both in one transaction (RunWrites.claim).

SQLite's writers' queue (runner/store/queue.py): a process's first claim (`runner run`, the one
claim of its process) takes its turn there for the insert, as the writes after it will: a
writer of ours stopped while it holds the queue is then met before the job starts, not after it
ran. Repeat claims (a daemon's supervisor workers) take no turn: SQLite's own lock arbitrates
a one-row insert, as it does for the raw insert. Handing the queue from process to process for
each such insert cost up to a third of the claim rate of four daemons on one file (bench/claim.py),
where the busy handler lets the process that holds the lock go on; their dispatch lateness was
the same either way (bench/dispatch.py, bench/README.md).

The statements are built once per engine from the runs table (bind processors included, so a value
is stored exactly as SQLAlchemy stores it). A process's first claim borrows a connection from the
engine's pool; a process that claims again (a daemon's supervisor worker, one claim per fire)
keeps a connection of its own for its claims, in autocommit, with one cursor: borrowing from the
pool, switching autocommit on and off and making a cursor cost as much client CPU as the rest of
a lost claim (bench/claim.py). It is pinged after PING_IDLE_S unused, as pooled connections are,
and replaced when the server dropped it. Driver errors are wrapped as SQLAlchemy's.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any, NoReturn

import sqlalchemy as sa

from runner.models import runs
from runner.store.clock import now_sql
from runner.store.engine import PING_IDLE_S

WINS_FOR_PLAIN = 3  # PostgreSQL: claims won in a row after which a process expects to win

# The columns a claim writes (RunWrites.claim's values), besides id and heartbeat_at.
CLAIM_COLUMNS = (
    "job",
    "fire_key",
    "trigger",
    "attempt",
    "first_run_id",
    "status",
    "late",
    "scheduled_at",
    "queued_at",
    "started_at",
    "ended_at",
    "error",
    "host",
    "pid",
    "pidns",
    "params",
    "paths",
    "reason",
    "late_s",
)
_STATUS = CLAIM_COLUMNS.index("status")
# Claim connections a forked child inherited: its parent's, never used or closed in the child
# (SQLite and libpq both say a connection must not cross a fork), kept referenced so that no
# finalizer closes them there either.
_INHERITED: list[Any] = []


class FireClaim:
    """One engine's claim statement: `claim(values)` -> (run id, won, status). `won` False: the
    id and status are those of the run that has the fire, or None when that run committed while
    the statement ran (PostgreSQL's statement cannot see it then; no second round trip asks)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self._postgresql = dialect.name == "postgresql"
        self._mark = "%s" if self._postgresql else "?"  # the driver's positional placeholder
        # The positions of the values SQLAlchemy converts when it binds them (datetimes, JSON):
        # the dialect's own processor (a SQLite DATETIME is SQLAlchemy's text, which the generic
        # type's processor leaves to the driver's deprecated adapter, with another format).
        self._processors: list[tuple[int, Callable[[Any], Any]]] = []
        for index, name in enumerate(CLAIM_COLUMNS):
            processor = runs.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors.append((index, processor))
        self._plain = self._plain_insert()
        # One lookup and one full statement for a fire's first attempt and one for its retries:
        # each unique key is a partial index (attempt = 1, attempt > 1), which a lookup uses only
        # when its WHERE says which part, in so many words.
        self._selects = {first: self._select(first) for first in (True, False)}
        self._inserts = {first: self._full_insert(first) for first in (True, False)}
        # Claims won in a row. After a loss (0): on SQLite, look before writing; on PostgreSQL,
        # the full statement until WINS_FOR_PLAIN wins. One daemon never loses and pays neither;
        # processes that contend for fires answer most of them with a read instead of queueing
        # for the write lock (SQLite) or a second round trip (PostgreSQL) to learn they lost.
        self._won_in_a_row = WINS_FOR_PLAIN
        # This process's own claim connection (the driver's) and cursor, from its second claim.
        self._lock = threading.Lock()
        self._claimed = False
        self._kept: Any = None
        self._cursor: Any = None
        self._used_at = 0.0
        claim = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (alive := claim()) is not None and alive._forget_parent())

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own (another thread of the parent may have held the
        parent's at the fork), and none of the parent's connection."""
        self._lock = threading.Lock()
        if self._kept is not None:
            _INHERITED.append(self._kept)
        self._claimed, self._kept, self._cursor = False, None, None

    def claim(
        self, values: Mapping[str, Any], turn: Callable[[], AbstractContextManager[object]] = nullcontext
    ) -> tuple[int | None, bool, str | None]:
        """`turn`: this process's turn at the SQLite writers' queue (Store's), taken for the
        insert of a first claim alone; the read before it takes none."""
        first = values["attempt"] == 1
        key = (
            (values["job"], values["fire_key"])
            if first
            else (values["job"], values["fire_key"], values["attempt"])
        )
        row = [values[name] for name in CLAIM_COLUMNS]
        given = done = used = None  # queued_at and started_at are one datetime: converted once
        for index, processor in self._processors:
            value = row[index]
            if value is None:  # each stores None as NULL (JSON columns: none_as_null)
                continue
            if value is not given or processor is not used:
                given, used, done = value, processor, processor(value)
            row[index] = done
        with self._lock:
            if not self._claimed:  # one claim (`runner run`) borrows, and opens nothing more
                self._claimed = True
                return self._claim_borrowed(key, row, first, turn)
            cursor = self._kept_cursor()
            try:  # no turn at the writers' queue (see the module's docstring)
                return self._claim_on(cursor, key, row, first, nullcontext)
            except Exception as exc:
                self._failed(
                    exc,
                    self._kept,
                    cursor,
                    self._inserts[first],
                    row,
                    lambda _exc: self._close_kept(),
                )
            finally:
                self._used_at = time.monotonic()

    def _claim_borrowed(
        self,
        key: tuple[Any, ...],
        row: list[Any],
        first: bool,
        turn: Callable[[], AbstractContextManager[object]],
    ) -> tuple[Any, bool, Any]:
        raw = self._pooled()
        try:
            driver = raw.driver_connection
            if self._postgresql:
                driver.autocommit = True  # one statement, its own transaction: no BEGIN, no COMMIT
            try:
                cursor = driver.cursor()
                try:
                    return self._claim_on(cursor, key, row, first, turn)
                except Exception as exc:
                    self._failed(exc, driver, cursor, self._inserts[first], row, raw.invalidate)
                finally:
                    cursor.close()
            finally:
                if self._postgresql and not driver.closed:
                    driver.autocommit = False
        finally:
            raw.close()

    def _claim_on(
        self,
        cursor: Any,
        key: tuple[Any, ...],
        row: list[Any],
        first: bool,
        turn: Callable[[], AbstractContextManager[object]],
    ) -> tuple[Any, bool, Any]:
        if self._postgresql and self._won_in_a_row >= WINS_FOR_PLAIN:
            found = cursor.execute(self._plain, row).fetchone()
            if found is not None:
                return found[0], True, found[1]
            self._won_in_a_row = 0  # a new statement: it sees the winner's row, committed
            found = cursor.execute(self._selects[first], key).fetchone()
            return (found[0], False, found[1]) if found is not None else (None, False, None)
        if self._postgresql:
            found = cursor.execute(self._inserts[first], (*row, *key, *key)).fetchone()
            if found is None:  # the fire's run committed after the statement began: it cannot see it
                self._won_in_a_row = 0
                return None, False, None
            self._won_in_a_row = self._won_in_a_row + 1 if found[2] else 0
            return found[0], found[2], found[1]
        if self._won_in_a_row == 0:
            # A fire already claimed is answered by a read, which takes no lock: the processes
            # that come second do not queue for the write lock to learn they lost.
            found = cursor.execute(self._selects[first], key).fetchone()
            if found is not None:
                return found[0], False, found[1]
        with turn():
            cursor.execute(self._plain, row)  # autocommit: committed when it returns
        if cursor.rowcount == 1:
            self._won_in_a_row += 1
            return cursor.lastrowid, True, row[_STATUS]
        self._won_in_a_row = 0
        found = cursor.execute(self._selects[first], key).fetchone()
        return (found[0], False, found[1]) if found is not None else (None, False, None)

    def _kept_cursor(self) -> Any:
        """This process's claim cursor, on its own connection: opened through the engine (its
        connect settings and events) and taken out of the pool; pinged when unused for
        PING_IDLE_S, replaced when the ping fails."""
        if self._kept is not None and time.monotonic() - self._used_at >= PING_IDLE_S:
            try:
                self.engine.dialect.do_ping(self._kept)
            except self.engine.dialect.loaded_dbapi.Error:
                self._close_kept()
                self._server_dropped()
        if self._kept is None:
            raw = self._pooled()
            driver = raw.driver_connection
            raw.detach()  # ours now: the pool neither hands it out nor counts it
            if self._postgresql:
                driver.autocommit = True
            self._kept, self._cursor = driver, driver.cursor()
        return self._cursor

    def _server_dropped(self) -> None:
        """The server dropped a connection (a restart drops them all): the pool's idle ones are
        closed too, rather than each failing one statement of its own, as SQLAlchemy does when
        a statement of its own meets a dropped connection."""
        self.engine.dispose()

    def _close_kept(self) -> None:
        with suppress(Exception):  # dropped by the server already
            self._kept.close()
        self._kept = self._cursor = None

    def _select(self, first: bool) -> str:
        """Who has the fire: by its unique key, in the words of its partial index (parameters:
        job, fire key and, for a retry, attempt)."""
        m = self._mark
        attempt = "attempt = 1" if first else f"attempt > 1 AND attempt = {m}"
        return f"SELECT id, status FROM runs WHERE job = {m} AND fire_key = {m} AND {attempt}"

    def _plain_insert(self) -> str:
        """The row's insert (its parameters: the row), shaped like the raw insert: the id is the
        column's own (PostgreSQL's sequence, SQLite's next rowid), and a first attempt's
        first_run_id is NULL (it is its own first run), so that PostgreSQL checks no foreign key
        for it. On PostgreSQL it returns the winner's id and status, nothing for a loser."""
        m = self._mark
        names = ", ".join(("heartbeat_at", *CLAIM_COLUMNS))
        values = ", ".join([now_sql(self.engine.dialect.name)] + [m] * len(CLAIM_COLUMNS))
        returning = " RETURNING id, status" if self._postgresql else ""
        return f"INSERT INTO runs ({names}) VALUES ({values}) ON CONFLICT DO NOTHING{returning}"

    def _full_insert(self, first: bool) -> str:
        """PostgreSQL's claim for a process that expects to lose (its parameters: the row, the
        fire's key, the key again): inserts the row unless the fire's row is already there
        (committed), which then takes no sequence value and tries no insert, and answers the
        winner's id and status with `true`, or the row that has the fire with `false`."""
        if not self._postgresql:
            return self._plain
        m, dialect = self._mark, self.engine.dialect
        names = ", ".join(("heartbeat_at", *CLAIM_COLUMNS))
        # A SELECT list infers no type from the target column.
        picked = [f"CAST({m} AS {runs.c[name].type.compile(dialect=dialect)})" for name in CLAIM_COLUMNS]
        select = self._selects[first]
        taken = select.replace("SELECT id, status", "SELECT", 1)
        return (
            f"WITH claimed AS (INSERT INTO runs ({names}) "
            f"SELECT {now_sql(dialect.name)}, {', '.join(picked)} WHERE NOT EXISTS ({taken}) "
            "ON CONFLICT DO NOTHING RETURNING id, status) "
            "SELECT id, status, true FROM claimed UNION ALL "
            f"{select.replace('SELECT id, status', 'SELECT id, status, false', 1)} "
            "AND NOT EXISTS (SELECT FROM claimed)"
        )

    def _pooled(self) -> Any:
        """A connection of the pool. The pool raises the driver's own error when it cannot
        connect (engine.connect() would have wrapped it): here it is SQLAlchemy's, as every other
        failure of the database is, so the store turns it into its one-line StorageError."""
        try:
            return self.engine.raw_connection()
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, None, None, "connect", ()) from exc

    def _failed(
        self,
        exc: Exception,
        driver: Any,
        cursor: Any,
        statement: str,
        params: Any,
        let_go: Callable[[Exception], object],
    ) -> NoReturn:
        """Raise a failed statement's error: the driver's as SQLAlchemy's, anything else (the
        writers' queue timing out) as it is. A connection the server dropped is let go
        (`let_go(exc)`), and the pool's idle connections with it (_server_dropped)."""
        wrapped = self._wrapped(exc, driver, cursor, statement, params)
        if wrapped is exc:
            raise exc
        if getattr(wrapped, "connection_invalidated", False):
            let_go(exc)
            self._server_dropped()
        raise wrapped from exc

    def _wrapped(self, exc: Exception, driver: Any, cursor: Any, statement: str, params: Any) -> Exception:
        """The driver's error as SQLAlchemy's, flagged `connection_invalidated` when the server
        dropped the connection (the caller then lets it go)."""
        dialect = self.engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        if not isinstance(exc, dbapi_error):
            return exc
        dropped = driver is not None and dialect.is_disconnect(exc, driver, cursor)
        return sa.exc.DBAPIError.instance(statement, params, exc, dbapi_error, connection_invalidated=dropped)
