"""Storage faults never lie: a full disk, a read-only database, a database server gone mid-run —
each is one line with its own exit code, and the history says what happened as soon as it can."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import Gate, Project, assert_one_line_error, postgres_schema
from tcpproxy import Proxy

EXIT_STORAGE = 5
ECHO = "[job:echo]\n"


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "256k") -> Iterator[Path]:
    """A small tmpfs at `path`: a disk we may fill up or make read-only."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> None:
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass  # full
    finally:
        os.close(fd)


def test_a_full_log_folder_fails_the_run_in_one_line_and_records_why(sqlite_project: Project) -> None:
    project = sqlite_project
    logs = project.root / "logs"
    with tiny_disk(logs):
        project.configure(ECHO, log_dir=str(logs))
        fill(logs)

        done = project.runner("run", "echo")

        assert_one_line_error(done, "cannot write the run log", "No space left", exit_code=EXIT_STORAGE)
        row = project.only_run()
        assert row["status"] == "failed", row
        assert "No space left" in row["error"]


def test_a_full_database_disk_is_one_line_exit_5(sqlite_project: Project) -> None:
    project = sqlite_project
    disk = project.root / "dbdisk"
    with tiny_disk(disk, "1m"):
        project.configure(ECHO, database=f"sqlite:///{disk / 'runner.db'}")
        assert project.runner("run", "echo").returncode == 0
        fill(disk)

        done = project.runner("run", "echo", "-p", "text=" + "y" * 100_000)

        assert_one_line_error(done, "disk is full", exit_code=EXIT_STORAGE)


def test_a_read_only_database_is_one_line_exit_5(sqlite_project: Project) -> None:
    project = sqlite_project
    disk = project.root / "dbdisk"
    with tiny_disk(disk, "4m"):
        project.configure(ECHO, database=f"sqlite:///{disk / 'runner.db'}")
        assert project.runner("run", "echo").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

        done = project.runner("run", "echo")

    assert done.returncode == EXIT_STORAGE, done
    assert len(done.stderr_lines) == 1 and "Traceback" not in done.stderr, done
    assert "database" in done.stderr


def test_postgresql_gone_mid_run_keeps_the_outcome_and_records_it_later(tmp_path: Path) -> None:
    with postgres_schema() as url:  # the fixture's own database, or a skip saying how to get one
        parts = urlsplit(url)
        proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
        try:
            netloc = (
                f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
            )
            project = Project(tmp_path / "project", urlunsplit(parts._replace(netloc=netloc)))
            gate = Gate(project, lock_timeout="2s")
            supervisor = project.start("run", "gate")
            gate.wait_started(1)
            proxy.cut()
            gate.open()
            done = project.finish(supervisor)

            assert done.returncode == EXIT_STORAGE, done
            assert len(done.stderr_lines) == 1 and "Traceback" not in done.stderr, done
            assert "ended succeeded" in done.stderr and "recorded by the next runner command" in done.stderr
            assert list((project.var_dir / "unrecorded").glob("*.json")), "the outcome is kept on disk"

            proxy.restore()
            row = project.only_run()  # the next command records it: succeeded, never 'lost'
            assert row["status"] == "succeeded", row
            assert not list((project.var_dir / "unrecorded").glob("*.json"))
        finally:
            proxy.close()
