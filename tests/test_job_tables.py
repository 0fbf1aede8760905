"""A job's tables belong to the job (runner.jobtables): the engine's migrations create none of
them; the job creates, adopts and upgrades its own, once, under a lock, on both backends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from runner.jobtables import JobTables, JobTablesTooNew


class JobData:
    """What a JobContext gives JobTables.ensure: the job-data engine and a write transaction."""

    def __init__(self, store: Any) -> None:
        self._data = store.job_data()

    @property
    def engine(self) -> sa.Engine:
        return self._data.engine

    def transaction(self) -> Any:
        return self._data.begin()


def declared(version: int = 1, upgrades: dict | None = None, extra: bool = False) -> JobTables:
    metadata = sa.MetaData()
    sa.Table("things", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))
    if extra:
        sa.Table("more_things", metadata, sa.Column("id", sa.Integer, primary_key=True))
    return JobTables("thing_job", metadata, version=version, upgrades=upgrades)


def versions(data: JobData) -> list[tuple[str, int]]:
    with data.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text("SELECT owner, version FROM job_schema"))]


def tables(data: JobData) -> set[str]:
    with data.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


@pytest.fixture
def data(store: Any) -> Iterator[JobData]:
    yield JobData(store)


def test_engine_migrations_create_no_job_table(store: Any) -> None:
    store.upgrade()
    names = tables(JobData(store)) | set(sa.inspect(store.engine).get_table_names())
    assert "images" not in names
    assert "job_schema" in names


def test_ensure_creates_the_tables_once_and_records_the_version(data: JobData) -> None:
    first = declared()
    first.ensure(data)
    assert "things" in tables(data)
    assert versions(data) == [("thing_job", 1)]
    with data.transaction() as conn:
        conn.execute(sa.text("INSERT INTO things (id, name) VALUES (1, 'kept')"))
    declared().ensure(data)  # a new process (a new JobTables) finds it done and keeps the rows
    with data.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM things")).scalars().all() == ["kept"]


def test_an_upgrade_step_runs_once_and_new_tables_appear(data: JobData) -> None:
    declared().ensure(data)
    calls: list[int] = []

    def add_column(conn: sa.Connection) -> None:
        calls.append(2)
        conn.execute(sa.text("ALTER TABLE things ADD COLUMN note TEXT"))

    declared(version=2, upgrades={2: add_column}, extra=True).ensure(data)
    declared(version=2, upgrades={2: add_column}, extra=True).ensure(data)
    assert calls == [2]
    assert versions(data) == [("thing_job", 2)]
    assert {"things", "more_things"} <= tables(data)
    with data.engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("things")}
    assert "note" in columns


def test_older_code_refuses_newer_tables(data: JobData) -> None:
    declared(version=2, upgrades={2: lambda conn: None}).ensure(data)
    with pytest.raises(JobTablesTooNew, match="at version 2, this code knows 1"):
        declared(version=1).ensure(data)


def test_a_version_without_its_upgrade_step_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"no upgrade step for version\(s\) \[2, 3\]"):
        declared(version=3)


def test_tables_an_older_layout_made_are_adopted_and_upgraded(data: JobData) -> None:
    """Databases migrated before 0007 hold `images` from engine revision 0004: the job adopts
    such a table as version 1 (with its rows) and runs the later steps on it."""
    with data.transaction() as conn:
        conn.execute(sa.text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(sa.text("INSERT INTO things (id, name) VALUES (1, 'old')"))
    declared(
        version=2, upgrades={2: lambda c: c.execute(sa.text("ALTER TABLE things ADD COLUMN note TEXT"))}
    ).ensure(data)
    with data.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name, note FROM things")).all() == [("old", None)]
    assert versions(data) == [("thing_job", 2)]


def test_the_ingest_job_declares_what_revision_0004_created(data: JobData) -> None:
    """The `images` table of databases made before 0007 (engine revision 0004's DDL, kept here as
    it was) is adopted as version 1 of jobs.ingest_images's tables, and its upgrade steps bring it
    to exactly what the job declares now."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from jobs.ingest_images import TABLES, metadata

    with data.transaction() as conn:
        LEGACY_IMAGES.create(conn)  # with its two indexes
    TABLES.ensure(data)
    with data.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": lambda name, kind, parent: kind != "table" or name in metadata.tables}
        )
        assert compare_metadata(context, metadata) == []
    assert ("ingest_images", TABLES.version) in versions(data)  # adopted as 1, brought up to date


@pytest.mark.parametrize("processes", [6])
def test_concurrent_first_runs_create_the_tables_once(database_url: str, processes: int) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import sqlalchemy as sa
        from runner.jobtables import JobTables
        from runner.store import Store
        store = Store({database_url!r}).job_data()
        class Data:
            engine = store.engine
            transaction = staticmethod(store.begin)
        metadata = sa.MetaData()
        sa.Table("things", metadata, sa.Column("id", sa.Integer, primary_key=True))
        JobTables("thing_job", metadata).ensure(Data())
        print("ok")
        """
    )
    started = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in started]
    assert all(code == 0 and out.strip() == "ok" for out, _err, code in results), results
    from runner.store import Store

    data = JobData(Store(database_url))
    assert versions(data) == [("thing_job", 1)]


_legacy = sa.MetaData()
LEGACY_IMAGES = sa.Table(  # engine revision 0004 as it was: op.create_table("images", ...) + two indexes
    "images",
    _legacy,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("source_size", sa.BigInteger, nullable=False),
    sa.Column("source_mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("processed_path", sa.Text, nullable=False),
    sa.Column("duplicate_of", sa.Integer, sa.ForeignKey("images.id"), nullable=True),
    sa.Column("near_duplicate_of", sa.Integer, sa.ForeignKey("images.id"), nullable=True),
    sa.Column("near_distance", sa.Integer, nullable=True),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("frames", sa.Integer, nullable=False),
    sa.Column("byte_size", sa.BigInteger, nullable=False),
    sa.Column("captured_at", sa.DateTime, nullable=True),
    sa.Column("channel_means", sa.JSON, nullable=False),
    sa.Column("channel_stds", sa.JSON, nullable=False),
    sa.Column("brightness", sa.JSON, nullable=False),
    sa.Column("dhash", sa.BigInteger, nullable=False),
    sa.Column("thumbnail_path", sa.Text, nullable=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("ingested_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("processed_path", name="uq_images_processed_path"),
    sa.Index("ix_images_sha256", "sha256"),
    sa.Index("ix_images_state", "state"),
)
