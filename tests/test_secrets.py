"""Secrets never leave in clear: URL passwords are masked wherever settings or parameters are
printed or stored, a bad database URL is refused without echoing it, and -p KEY=@FILE keeps a
secret out of `ps`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error

PASSWORD = "pw-in-url-9f3"
URL = f"postgresql://app:{PASSWORD}@db.example:5432/app"


def test_url_passwords_are_masked_everywhere_settings_are_printed_or_stored(sqlite_project: Project):
    project = sqlite_project
    project.configure(
        f"""
        [job:connects]
        uses = jobs_fixture.misc:connects
        db_url = {URL}
        mirrors = redis://:{PASSWORD}@cache/0, https://u:{PASSWORD}@mirror/x
        """
    )
    outputs = {
        "show --json": project.runner("show", "connects", "--json"),
        "show": project.runner("show", "connects"),
        "run --help": project.runner("run", "connects", "--help"),
        "run": project.runner("run", "connects"),
    }
    outputs["history"] = project.runner("history", "--json")
    run_id = outputs["history"].json()[0]["id"]
    outputs["logs"] = project.runner("logs", str(run_id))
    for what, done in outputs.items():
        assert done.returncode == 0, done
        assert PASSWORD not in done.stdout + done.stderr, f"{what} shows the password\n{done}"
    assert "default-pw" not in outputs["run --help"].stdout + outputs["show"].stdout
    assert "postgresql://app:***@db.example:5432/app" in outputs["show"].stdout
    params = outputs["history"].json()[0]["params"]
    assert params["db_url"] == "postgresql://app:***@db.example:5432/app", params
    assert params["mirrors"] == ["redis://:***@cache/0", "https://u:***@mirror/x"], params
    first_line = outputs["logs"].stdout.splitlines()[0]
    assert "app:***@db.example" in first_line, first_line


@pytest.mark.parametrize(
    "database",
    [
        f"postgresql://app:{PASSWORD}@db.example:notaport/app",
        f"postgresql://app:{PASSWORD}@db.example:99999/app",
        f"postgresql//app:{PASSWORD}@db.example/app",
    ],
    ids=["non-numeric-port", "port-out-of-range", "not-a-url"],
)
@pytest.mark.parametrize("command", [("check",), ("history",), ("run", "hello")])
def test_a_bad_database_url_is_one_line_without_its_password(
    sqlite_project: Project, database: str, command: tuple[str, ...]
):
    sqlite_project.configure("[job:hello]\nuses = jobs_fixture.echo:echo", database=database)
    done = sqlite_project.runner(*command)
    assert_one_line_error(done, "[runner] database")
    assert PASSWORD not in done.stderr


def test_a_parameter_can_come_from_a_file_and_secrets_say_so_in_help(sqlite_project: Project, tmp_path: Path):
    project = sqlite_project
    project.configure("[job:connects]\nuses = jobs_fixture.misc:connects")
    secret = tmp_path / "db_url.txt"
    secret.write_text(URL + "\n")
    done = project.runner("run", "connects", "-p", f"db_url=@{secret}", "--json")
    assert done.returncode == 0, done
    assert done.json()["result"] == str(len(URL))  # the file's text, its newline dropped
    missing = project.runner("run", "connects", "-p", f"db_url=@{tmp_path / 'nope'}")
    assert_one_line_error(missing, "cannot read")
    project.configure("[job:secretive]")
    helped = project.runner("run", "secretive", "--help")
    assert "shows in `ps`" in helped.stdout and "-p password=@FILE" in helped.stdout, helped
