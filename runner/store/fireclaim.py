"""A fire claimed in one statement: the run row, its first_run_id and (for a loser) who has the
fire, in one autocommit round trip through the bare driver.

Every daemon on every host tries each fire; exactly one insert wins the unique (job, fire key). A
claim without an overlap lease needs nothing else in its transaction, so it is shaped like a raw
`INSERT ... ON CONFLICT DO NOTHING` (bench/claim.py compares the two): one statement, one commit,
no BEGIN, no second statement for first_run_id (the row's own id, taken in the insert), and on
PostgreSQL no second round trip for the loser either (the statement returns the winner's row,
and a fire already committed takes no sequence value and tries no insert). On SQLite it takes
its turn at the writers' queue and SQLite's write lock only while SQLite runs the insert, never
while Python runs, and a process that lost its last claim reads before it writes. A claim with a
lease (overlap = skip or queue) takes both in one transaction (RunWrites.claim).

The statement is built once per dialect from the runs table (bind processors included, so a value
is stored exactly as SQLAlchemy stores it) and run through the pooled DBAPI connection; driver
errors are wrapped as SQLAlchemy's, a dropped connection is invalidated as SQLAlchemy would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import sqlalchemy as sa

from runner.models import runs
from runner.store.clock import server_now

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


class FireClaim:
    """One engine's claim statement: `claim(values)` -> (run id, won, status). `won` False: the
    id and status are those of the run that has the fire, or None when that run committed while
    the statement ran (PostgreSQL's statement cannot see it then; no second round trip asks)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self._postgresql = dialect.name == "postgresql"
        self._processors: list[tuple[str, Callable[[Any], Any]]] = []
        for name in CLAIM_COLUMNS:
            processor = runs.c[name].type.bind_processor(dialect)
            if processor is not None:
                self._processors.append((name, processor))
        # Built on first use (PostgreSQL names its sequence then), one for a fire's first attempt
        # and one for its retries: each unique key is a partial index (attempt = 1, attempt > 1),
        # which a lookup uses only when its WHERE says which part, in so many words.
        self._inserts: dict[bool, str] = {}
        self._selects = {first: self._select(first) for first in (True, False)}
        # SQLite: after a lost claim, look before writing. One daemon (the embedded case) never
        # loses and never pays the read; processes that contend for fires answer most of them
        # with a read instead of queueing for the write lock to learn they lost. (PostgreSQL's
        # statement answers a loser in the same round trip and takes no table lock.)
        self._read_first = False

    def claim(
        self, values: Mapping[str, Any], turn: Callable[[], AbstractContextManager[object]] = nullcontext
    ) -> tuple[int | None, bool, str | None]:
        """`turn`: this process's turn at the SQLite writers' queue (Store's), taken for the
        insert alone; the read before it takes none."""
        first = values["attempt"] == 1
        raw = self._connection()
        try:
            driver = raw.driver_connection
            if self._postgresql:
                driver.autocommit = True  # one statement, its own transaction: no BEGIN, no COMMIT
            try:
                cursor = driver.cursor()
                try:
                    if self._postgresql:
                        return self._claim_postgresql(cursor, values, first)
                    return self._claim_sqlite(cursor, values, first, turn)
                except Exception as exc:
                    wrapped = self._wrapped(exc, raw, cursor, self._inserts.get(first, "claim"), values)
                    if wrapped is exc:  # not the driver's (the writers' queue timed out): as it is
                        raise
                    raise wrapped from exc
                finally:
                    cursor.close()
            finally:
                if self._postgresql and not driver.closed:
                    driver.autocommit = False
        finally:
            raw.close()

    def _claim_postgresql(self, cursor: Any, values: Mapping[str, Any], first: bool) -> tuple[Any, bool, Any]:
        statement = self._inserts.get(first) or self._build(cursor, first)
        row = cursor.execute(statement, self._processed(values)).fetchone()
        if row is None:  # the fire's run committed after the statement began: it cannot see it
            return None, False, None
        return row[0], row[2], row[1]

    def _claim_sqlite(
        self,
        cursor: Any,
        values: Mapping[str, Any],
        first: bool,
        turn: Callable[[], AbstractContextManager[object]],
    ) -> tuple[Any, bool, Any]:
        if self._read_first:
            # A fire already claimed is answered by a read, which takes no lock: the processes
            # that come second do not queue for the write lock to learn they lost.
            found = cursor.execute(self._selects[first], values).fetchone()
            if found is not None:
                return found[0], False, found[1]
        statement = self._inserts.get(first) or self._build(cursor, first)
        params = self._processed(values)
        with turn():
            cursor.execute(statement, params)  # autocommit: committed when it returns
        if cursor.rowcount == 1:
            self._read_first = False
            return cursor.lastrowid, True, values["status"]
        self._read_first = True
        found = cursor.execute(self._selects[first], values).fetchone()
        return (found[0], False, found[1]) if found is not None else (None, False, None)

    def _processed(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values as SQLAlchemy would bind them (UTC datetimes, JSON text, booleans)."""
        params = dict(values)
        for name, processor in self._processors:
            value = params[name]
            if value is not None:  # each stores None as NULL (JSON columns: none_as_null)
                params[name] = processor(value)
        return params

    def prepare(self) -> None:
        """Build both statements now (a worker does before its first fire): nothing is written."""
        if len(self._inserts) == 2:
            return
        raw = self._connection()
        try:
            cursor = raw.driver_connection.cursor()
            try:
                for first in (True, False):
                    self._build(cursor, first)
            except Exception as exc:
                wrapped = self._wrapped(exc, raw, cursor, "SELECT pg_get_serial_sequence('runs', 'id')", {})
                if wrapped is exc:
                    raise
                raise wrapped from exc
            finally:
                cursor.close()
        finally:
            raw.close()

    def _select(self, first: bool) -> str:
        """Who has the fire: by its unique key, in the words of its partial index."""
        p = _Placeholders(self._postgresql)
        attempt = "attempt = 1" if first else f"attempt > 1 AND attempt = {p['attempt']}"
        return (
            f"SELECT id, status FROM runs WHERE job = {p['job']} AND fire_key = {p['fire_key']} AND {attempt}"
        )

    def _build(self, cursor: Any, first: bool) -> str:
        p = _Placeholders(self._postgresql)
        now = str(server_now().compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True}))
        names = ", ".join(("id", "heartbeat_at", *CLAIM_COLUMNS))
        picked = []
        for name in CLAIM_COLUMNS:
            value = p[name]
            if self._postgresql:  # a SELECT list infers no type from the target column
                value = f"CAST({value} AS {runs.c[name].type.compile(dialect=self.engine.dialect)})"
            if name == "first_run_id":  # a first attempt is its own first run
                value = f"COALESCE({value}, new.id)"
            picked.append(value)
        select = f"SELECT new.id, {now}, {', '.join(picked)} FROM new"
        if self._postgresql:
            cursor.execute("SELECT pg_get_serial_sequence('runs', 'id')")
            sequence = cursor.fetchone()[0]
            # A fire whose row is already there (committed) takes no id and tries no insert.
            taken = self._selects[first].replace("SELECT id, status", "SELECT", 1)
            self._inserts[first] = (
                f"WITH new AS (SELECT nextval('{sequence}'::regclass) AS id WHERE NOT EXISTS ({taken})), "
                f"claimed AS (INSERT INTO runs ({names}) {select} ON CONFLICT DO NOTHING RETURNING id, status) "
                "SELECT id, status, true FROM claimed UNION ALL "
                f"{self._selects[first].replace('SELECT id, status', 'SELECT id, status, false', 1)} "
                "AND NOT EXISTS (SELECT FROM claimed)"
            )
        else:  # one writer at a time on SQLite: the next id is the largest plus one (a bare
            # MAX(id) subquery reads the end of the rowid tree; COALESCE(MAX(id)) would scan it).
            # No WITH before INSERT: sqlite3 counts rowcount only for a statement that starts so.
            new = "(SELECT COALESCE((SELECT MAX(id) FROM runs), 0) + 1 AS id) AS new"
            self._inserts[first] = (
                f"INSERT INTO runs ({names}) {select.replace(' FROM new', f' FROM {new}')} "
                "WHERE true ON CONFLICT DO NOTHING"
            )
        return self._inserts[first]

    def _connection(self) -> Any:
        """A pooled connection. The pool raises the driver's own error when it cannot connect
        (engine.connect() would have wrapped it): here it is SQLAlchemy's, as every other
        failure of the database is, so the store turns it into its one-line StorageError."""
        try:
            return self.engine.raw_connection()
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, None, None, "connect", {}) from exc

    def _wrapped(self, exc: Exception, raw: Any, cursor: Any, statement: str, params: Any) -> Exception:
        """The driver's error as SQLAlchemy's; a dropped connection leaves the pool."""
        dialect = self.engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        if not isinstance(exc, dbapi_error):
            return exc
        dropped = raw is not None and dialect.is_disconnect(exc, raw.driver_connection, cursor)
        if dropped:
            raw.invalidate(exc)
        return sa.exc.DBAPIError.instance(statement, params, exc, dbapi_error, connection_invalidated=dropped)


class _Placeholders:
    """The driver's named placeholder: %(name)s for psycopg, :name for sqlite3."""

    def __init__(self, postgresql: bool) -> None:
        self.postgresql = postgresql

    def __getitem__(self, name: str) -> str:
        return f"%({name})s" if self.postgresql else f":{name}"
