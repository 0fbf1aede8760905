"""The SQLite database file deleted or replaced under a running daemon: it stops, failing, with one
clear line, so the service manager restarts it on the file now at the path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Project, wait_until
from test_daemon import configure_tick, stop

EXIT_STORAGE = 5


def database_path(project: Project) -> Path:
    return Path(project.database_url.removeprefix("sqlite:///"))


def make_other_database(path: Path) -> None:
    """A database of its own (schema and one run), closed, as a restored backup would be."""
    from runner.models import RunStatus
    from runner.store import Store

    other = Store(f"sqlite:///{path}")
    other.claim(job="tick", fire_key="from-the-other-file", trigger="manual", status=RunStatus.SKIPPED)
    other.engine.dispose()


def ticks(project: Project) -> list[dict]:
    return [r for r in project.history("tick") if r["trigger"] == "schedule"]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_file_deleted_or_replaced_under_the_daemon_stops_it(sqlite_project: Project, how: str):
    project = sqlite_project
    out = project.root / "ticks.txt"
    configure_tick(project, "every 1s", out=out, heartbeat="1s")
    database = database_path(project)
    daemon = project.start("daemon")
    wait_until(lambda: ticks(project), "a fire recorded in the first database file")
    if how == "deleted":
        database.unlink()
    else:
        make_other_database(database.with_name("other.db"))
        os.replace(database.with_name("other.db"), database)

    done = project.finish(daemon)

    assert done.returncode == EXIT_STORAGE, done
    errors = [line for line in done.stderr_lines if " ERROR " in line]
    assert len(errors) == 1, done
    assert f"database file {database} was {how} while in use" in errors[0], done
    assert "Traceback" not in done.stderr, done
    restarted = project.start("daemon")
    wait_until(lambda: len(ticks(project)) >= 2, "fires recorded in the database file now at the path")
    wait_until(lambda: project.runner("status", "--json").json()["daemons"], "status to show the daemon")
    stop(project, restarted)
    fire_keys = {r["fire_key"] for r in project.history("tick")}
    assert ("from-the-other-file" in fire_keys) == (how == "replaced")
