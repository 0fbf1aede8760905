"""Schema compatibility: a runner refuses a database that a newer runner migrated, in one line
naming the version to install, and writes nothing to it; `runner db upgrade` brings a database
of every earlier revision, with rows in every table, to ours and keeps every row."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Project, assert_one_line_error

from runner.errors import EXIT_STORAGE
from runner.models import SCHEMA_REVISION
from runner.store import MIGRATIONS_DIR, Store

NEWER_REVISION = "9999"  # no runner knows it
NEWER_RUNNER = "7.1.0"  # what "migrated" the database in these tests
SEED_ROWS = 3


def alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def earlier_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    revisions = [s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    return sorted(r for r in revisions if r != SCHEMA_REVISION)


def engine_of(url: str) -> sa.Engine:
    return Store(url).engine


def table_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, by table, in primary-key order."""
    engine = engine_of(url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            return {
                name: [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                for name, t in sorted(metadata.tables.items())
            }
    finally:
        engine.dispose()


def sqlite_file(project: Project) -> Path | None:
    url = sa.engine.make_url(project.database_url)
    return Path(url.database) if url.get_backend_name() == "sqlite" else None


def files_under(folder: Path) -> set[str]:
    """Files in `folder`, leaving out SQLite's -wal/-shm (a reader may make and remove them)."""
    if not folder.exists():
        return set()
    return {str(p) for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


def test_the_known_revisions_are_alembics() -> None:
    from alembic.script import ScriptDirectory

    from runner.store.database import known_revisions

    script = ScriptDirectory.from_config(alembic_config())
    assert known_revisions() == {s.revision for s in script.walk_revisions()}


# --- 3: a newer schema is refused, and nothing is written --------------------------------------------


def newer_database(project: Project, *, record_version: bool = True) -> None:
    """A database with a run in it, then "migrated" by a newer runner: an unknown revision (and
    that runner's row in schema_upgrades)."""
    project.configure("[job:echo]\nuses = jobs_fixture.echo:echo\nschedule = cron * * * * *\ntext = x\n")
    done = project.runner("run", "echo")
    assert done.returncode == 0, done
    engine = engine_of(project.database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": NEWER_REVISION})
        if record_version:
            conn.execute(
                sa.text(
                    "INSERT INTO schema_upgrades (revision, runner_version, upgraded_at) "
                    "VALUES (:r, :v, CURRENT_TIMESTAMP)"
                ),
                {"r": NEWER_REVISION, "v": NEWER_RUNNER},
            )
    engine.dispose()


@pytest.mark.parametrize(
    "command",
    [
        ("run", "echo"),
        ("run", "echo", "--from-cron"),  # what a crontab line runs
        ("status",),
        ("history",),
        ("daemon",),
        ("db", "upgrade"),
        ("catchup",),
    ],
    ids=lambda c: " ".join(c),
)
def test_an_older_runner_refuses_a_newer_schema_and_writes_nothing(
    project: Project, command: tuple[str, ...]
):
    newer_database(project)
    database_file = sqlite_file(project)
    before_bytes = hashlib.sha256(database_file.read_bytes()).hexdigest() if database_file else None
    before_rows = table_rows(project.database_url)
    before_files = files_under(project.root) | (files_under(database_file.parent) if database_file else set())

    done = project.runner(*command)

    assert_one_line_error(
        done,
        f"schema revision {NEWER_REVISION}",
        f"install runner {NEWER_RUNNER} or newer",
        f"pip install 'backend-runner>={NEWER_RUNNER}'",
        "nothing was written",
        exit_code=EXIT_STORAGE,
    )
    assert table_rows(project.database_url) == before_rows  # no daemon row, no run, no table
    if database_file:
        assert hashlib.sha256(database_file.read_bytes()).hexdigest() == before_bytes
    after_files = files_under(project.root) | (files_under(database_file.parent) if database_file else set())
    assert after_files == before_files  # no log, no spool, no job-data database


def test_check_reports_a_newer_schema_and_without_a_version_says_so(sqlite_project: Project):
    project = sqlite_project
    newer_database(project, record_version=False)
    before = table_rows(project.database_url)

    checked = project.runner("check")
    status = project.runner("status")

    assert_one_line_error(checked, f"schema revision {NEWER_REVISION}", "nothing was written")
    assert_one_line_error(
        status,
        f"newer than runner {_version()} knows (its newest is {SCHEMA_REVISION})",
        "install the runner version that migrated it",
        exit_code=EXIT_STORAGE,
    )
    assert table_rows(project.database_url) == before


def _version() -> str:
    from runner.version import __version__

    return __version__


# --- 4: upgrades from every earlier revision keep every row ------------------------------------------


def seed_value(column: sa.Column, table: str, number: int) -> Any:
    """A distinct value of the column's type for row `number` (1-based)."""
    if column.foreign_keys:  # runs.first_run_id: the row itself (what revision 0006 backfills)
        return number
    try:
        kind = column.type.python_type
    except NotImplementedError:
        kind = str
    if kind is bool:
        return number % 2 == 0
    if kind is int:
        return number * 1000 + len(column.name) if not column.primary_key else number
    if kind is float:
        return number + 0.25
    if kind is datetime:
        return datetime(2026, 1, number, 12, 30, number)
    if kind in (dict, list):
        return {"row": number, "column": column.name, "items": [1, "two", None]}
    text = f"{table}.{column.name}.{number}"
    length = getattr(column.type, "length", None)
    return text[-length:] if length else text


def seed(url: str) -> dict[str, list[dict[str, Any]]]:
    """SEED_ROWS rows in every table of the schema as it is (its revision's columns)."""
    engine = engine_of(url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.begin() as conn:
            for name, table in metadata.tables.items():
                if name == "alembic_version":
                    continue
                rows = [
                    {c.name: seed_value(c, name, n) for c in table.columns} for n in range(1, SEED_ROWS + 1)
                ]
                conn.execute(sa.insert(table), rows)
                serial = [c for c in table.primary_key.columns if c.autoincrement is True or c.name == "id"]
                if conn.dialect.name == "postgresql" and serial:  # ids were given: move the sequence on
                    conn.execute(
                        sa.text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), {SEED_ROWS})")
                    )
    finally:
        engine.dispose()
    return table_rows(url)


def migrate_to(url: str, revision: str) -> None:
    from alembic import command

    engine = engine_of(url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    engine.dispose()


@pytest.mark.parametrize("revision", earlier_revisions())
def test_db_upgrade_from_every_earlier_revision_keeps_every_row(project: Project, revision: str):
    migrate_to(project.database_url, revision)
    seeded = seed(project.database_url)
    assert all(len(rows) == SEED_ROWS for name, rows in seeded.items() if name != "alembic_version")

    done = project.runner("db", "upgrade")
    upgraded = table_rows(project.database_url)

    assert done.returncode == 0, done
    assert f"upgraded from {revision} to revision {SCHEMA_REVISION}" in done.stdout, done
    assert upgraded["alembic_version"] == [{"version_num": SCHEMA_REVISION}]
    for name, rows in seeded.items():
        if name == "alembic_version":
            continue
        kept = [{key: row[key] for key in rows[0]} for row in upgraded[name]]
        if name == "schema_upgrades":  # the upgrade appends its own row after the seeded ones
            kept = kept[: len(rows)]
        assert kept == rows, f"{name}: rows changed by the upgrade from {revision}"
    recorded = upgraded["schema_upgrades"][len(seeded.get("schema_upgrades", ())) :]
    assert [(r["revision"], r["runner_version"]) for r in recorded] == [(SCHEMA_REVISION, _version())]
    again = project.runner("run", "echo")  # the upgraded database takes new runs
    assert again.returncode == 0, again
    assert len(table_rows(project.database_url)["runs"]) == SEED_ROWS + 1
