"""The SQL behind `runner.jobtables.JobTables`: read and move a job's version in `job_schema`."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import sqlalchemy as sa

from runner.models import job_schema, utcnow

if TYPE_CHECKING:
    from runner.jobtables import JobTables

_LOCK_NAMESPACE = 7_270_002  # PostgreSQL advisory locks: (namespace, crc32 of the owner)


def installed_version(engine: sa.Engine, owner: str) -> int:
    """The version of `owner`'s tables in this database; 0 when it created none yet."""
    with engine.connect() as conn:
        conn.execution_options(runner_read_only=True)
        version = conn.execute(sa.select(job_schema.c.version).where(job_schema.c.owner == owner)).scalar()
    return version or 0


def install(conn: sa.Connection, tables: JobTables) -> int:
    """Inside the caller's write transaction: create what is missing, run the upgrade steps after
    the recorded version, record the new one. Returns the version found (or made). SQLite's write
    transaction, or an advisory lock on the owner on PostgreSQL, makes concurrent callers take
    turns: the second finds the work done."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(tables.owner.encode()) - 2**31  # int4 range
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_NAMESPACE, key)))
    row = conn.execute(sa.select(job_schema.c.version).where(job_schema.c.owner == tables.owner)).scalar()
    found = row or 0
    if found >= tables.version:
        return found
    if found == 0:
        inspector = sa.inspect(conn)
        adopted = [t for t in tables.metadata.sorted_tables if inspector.has_table(t.name)]
        # Tables an older layout made (such as `images` from engine revision 0004) are taken as
        # version 1 and brought up by the steps; otherwise create the newest declaration at once.
        found = 1 if adopted else tables.version
    for step in range(found + 1, tables.version + 1):
        tables.upgrades[step](conn)
    tables.metadata.create_all(conn, checkfirst=True)  # whatever is still missing
    values = {"version": tables.version, "updated_at": utcnow()}
    if row is None:
        conn.execute(sa.insert(job_schema).values(owner=tables.owner, **values))
    else:
        conn.execute(sa.update(job_schema).where(job_schema.c.owner == tables.owner).values(**values))
    return tables.version
