"""What we keep under var/ is private: run logs 0600 in 0700 folders whatever the umask, and
folders an older version left readable are tightened (with their files) on first use."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Project


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_run_logs_and_their_folders_are_private(sqlite_project: Project):
    project = sqlite_project
    project.configure("[job:echo]\nuses = jobs_fixture.echo:echo")
    old_folder = project.var_dir / "log" / "echo"
    old_folder.mkdir(parents=True)
    os.chmod(project.var_dir, 0o755)
    os.chmod(old_folder, 0o755)
    old_log = old_folder / "0.log"
    old_log.write_text("an older version's log\n")
    os.chmod(old_log, 0o644)

    done = project.runner("run", "echo")
    assert done.returncode == 0, done
    run = project.only_run("echo")
    log = Path(run["log_path"])
    assert log.parent.parent == old_folder  # log_dir/JOB/YYYY-MM-DD/RUN_ID.log
    assert mode(log) == 0o600
    assert mode(log.parent) == 0o700
    assert mode(old_folder) == 0o700
    assert mode(old_log) == 0o600


def test_folders_we_create_are_0700_under_a_permissive_umask(sqlite_project: Project):
    project = sqlite_project
    project.configure("[job:echo]\nuses = jobs_fixture.echo:echo")
    done = project.command(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", *project.argv(("run", "echo"))], shown=("run", "echo")
    )
    assert done.returncode == 0, done
    run = project.only_run("echo")
    log = Path(run["log_path"])
    for folder in (project.var_dir, project.var_dir / "log", project.var_dir / "log" / "echo", log.parent):
        assert mode(folder) == 0o700, folder
    assert mode(log) == 0o600
