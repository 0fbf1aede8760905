"""Per-job state: the JSON values behind `ctx.state` (watermarks, cursors, counters), one row per
(job, key), written in the job's own transactions when it passes one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from runner.models import job_state, utcnow
from runner.store.base import StorePart
from runner.store.engine import dialect_insert

_MISSING = object()


class StateEntries(StorePart):
    """`store.state`: get, set, update and delete a job's keys. Values are any JSON value."""

    __slots__ = ()

    def get(self, job: str, key: str, default: Any = None, conn: sa.Connection | None = None) -> Any:
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

    def set(self, job: str, key: str, value: Any, conn: sa.Connection | None = None) -> None:
        if conn is None:
            with self.begin() as own:
                return self.set(job, key, value, own)
        now = utcnow()
        # One upsert: two runs writing the same new key at once must not collide on the key.
        insert = dialect_insert(conn.dialect.name)(job_state).values(
            job=job, key=key, value=value, updated_at=now
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[job_state.c.job, job_state.c.key],
                set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
            )
        )
        return None

    def update(
        self,
        job: str,
        key: str,
        change: Callable[[Any], Any],
        default: Any = None,
        conn: sa.Connection | None = None,
    ) -> Any:
        """Atomically replace the value with change(old value or default); returns the new value.
        Two runs updating one key at once both count: the second waits for the first."""
        if conn is None:
            with self.begin() as own:
                return self.update(job, key, change, default, own)
        current = self.get(job, key, _MISSING, conn)
        value = change(default if current is _MISSING else current)
        self.set(job, key, value, conn)
        return value

    def delete(self, job: str, key: str, conn: sa.Connection | None = None) -> None:
        statement = sa.delete(job_state).where(job_state.c.job == job, job_state.c.key == key)
        if conn is not None:
            conn.execute(statement)
        else:
            with self.begin() as own:
                own.execute(statement)

    def items(self, job: str) -> dict[str, Any]:
        with self.read() as conn:
            rows = conn.execute(sa.select(job_state.c.key, job_state.c.value).where(job_state.c.job == job))
            return {key: value for key, value in rows}
