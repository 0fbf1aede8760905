"""Tables a job owns: declared in the job's module, created and upgraded by the job itself.

The engine's migrations carry only the engine's tables (runs, leases, file claims, daemons, job
state). A job that keeps rows of its own declares them once, beside its code:

    metadata = sa.MetaData()
    orders = sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True), ...)
    TABLES = JobTables("poll_api", metadata, version=1)

    @job
    def poll(ctx: JobContext) -> dict:
        TABLES.ensure(ctx)          # cheap after the first run: one SELECT
        with ctx.transaction() as conn:
            conn.execute(sa.insert(orders).values(...))

`ensure` creates the missing tables in the job-data database (`ctx.engine`) under a lock, so
concurrent first runs create them once, and records the version in the engine's `job_schema`
table. To change a table later, raise `version` and give the step that brings the previous one
up to it:

    TABLES = JobTables("poll_api", metadata, version=2, upgrades={
        2: lambda conn: conn.execute(sa.text("ALTER TABLE orders ADD COLUMN note TEXT")),
    })

Each step runs once, in the same transaction that records its version. Code older than the
tables it finds (version in the database > `version`) refuses to run instead of writing to them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from runner.errors import RunnerError

if TYPE_CHECKING:
    import sqlalchemy as sa


class _HasJobData(Protocol):  # a JobContext, or anything with the job-data engine and transaction
    @property
    def engine(self) -> sa.Engine: ...

    def transaction(self): ...


class JobTablesTooNew(RunnerError):
    """The database holds a newer version of a job's tables than this code declares."""


class JobTables:
    """The tables of one job module (`owner`), at schema `version`; see the module docstring."""

    def __init__(
        self,
        owner: str,
        metadata: sa.MetaData,
        *,
        version: int = 1,
        upgrades: Mapping[int, Callable[[sa.Connection], object]] | None = None,
    ) -> None:
        if version < 1:
            raise ValueError("JobTables version starts at 1")
        missing = [step for step in range(2, version + 1) if step not in (upgrades or {})]
        if missing:
            raise ValueError(f"JobTables({owner!r}): no upgrade step for version(s) {missing}")
        self.owner = owner
        self.metadata = metadata
        self.version = version
        self.upgrades = MappingProxyType(dict(upgrades or {}))
        self._ready: set[int] = set()  # ids of engines already checked in this process

    def ensure(self, ctx: _HasJobData) -> None:
        """Create or upgrade this job's tables in the job-data database, once per process."""
        engine = ctx.engine
        if id(engine) in self._ready:
            return
        from runner.store.jobschema import install, installed_version

        found = installed_version(engine, self.owner)
        if found != self.version:
            with ctx.transaction() as conn:
                found = install(conn, self)
        if found > self.version:
            raise JobTablesTooNew(
                f"the tables of {self.owner} are at version {found}, this code knows {self.version}: "
                "install the newer job code that created them"
            )
        self._ready.add(id(engine))
