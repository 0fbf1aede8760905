"""The database server's clock in SQL: what every comparison between hosts is made on (lease
expiry, heartbeat age, a lost run, an orphan file claim), so a host whose own clock is minutes off
neither steals a lease nor reports a live run lost. SQLite has one host: its clock is SQLite's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from runner.models import UTCDateTime

if TYPE_CHECKING:
    from runner.store.database import Store

# SQLAlchemy stores a SQLite DATETIME as this text (microseconds, always six digits); SQLite's
# %f has milliseconds, so three zeros make the two sort alike and compare as text.
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f000"


class server_now(FunctionElement):
    """Now, UTC, on the database's clock, plus `plus_s` seconds (a number or a bind parameter)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "server_now"

    def __init__(self, plus_s: float | sa.BindParameter[Any] = 0.0) -> None:
        offset = plus_s if isinstance(plus_s, sa.BindParameter) else sa.literal(float(plus_s), sa.Float)
        super().__init__(offset)


def now_sql(dialect: str) -> str:
    """server_now() without an offset, as SQL text, for a statement written by hand (the claim
    in runner/store/fireclaim.py). PostgreSQL: timestamp without time zone holds UTC here; now()
    AT TIME ZONE 'UTC' is that, whatever the session's TimeZone (a bare now() would be compared
    after a conversion by it)."""
    if dialect == "postgresql":
        return "(now() AT TIME ZONE 'UTC')"
    return f"strftime('{_SQLITE_FORMAT}', 'now')"


@compiles(server_now)
def _sqlite_now(element: server_now, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"strftime('{_SQLITE_FORMAT}', 'now', printf('%+.3f seconds', {offset}))"


@compiles(server_now, "postgresql")
def _postgresql_now(element: server_now, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"({now_sql('postgresql')} + make_interval(secs => {offset}))"


def host_offset(store: Store) -> timedelta:
    """How far this host's clock is ahead of the database's (negative: behind), read halfway
    through one round trip. Reads no table, so it neither needs nor makes the schema (`runner
    doctor` asks it of a database it must not change)."""
    try:
        with store.engine.connect() as conn:
            before = datetime.now(UTC)
            db_now = conn.execute(sa.select(server_now())).scalar_one()
            after = datetime.now(UTC)
    except sa.exc.DBAPIError as exc:
        raise store.fault(exc) from None
    return before + (after - before) / 2 - db_now
