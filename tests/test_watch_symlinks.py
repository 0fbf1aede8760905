"""A watch job is handed regular files inside its folders only: never a symlink (to /etc/shadow,
out of the folder, to a folder), a fifo, a socket or a folder; with follow_symlinks = true, only
links whose target is a regular file inside a watched folder."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from conftest import Project, wait_until


def hostile_inbox(project: Project) -> Path:
    inbox = project.root / "inbox"
    (inbox / "sub").mkdir(parents=True)
    outside = project.root / "outside.txt"
    outside.write_text("not yours\n")
    (inbox / "a.txt").write_text("a regular file\n")
    (inbox / "sub" / "deep.txt").write_text("inside, one folder down\n")
    os.symlink("/etc/shadow", inbox / "shadow.txt")
    os.symlink(outside, inbox / "outside-link.txt")
    os.symlink(inbox / "sub", inbox / "folder-link.txt")
    os.symlink(inbox / "a.txt", inbox / "inside-link.txt")
    os.symlink(inbox / "sub" / "deep.txt", inbox / "deep-link.txt")
    os.symlink(inbox / "missing", inbox / "dangling.txt")
    os.mkfifo(inbox / "fifo.txt")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(inbox / "socket.txt"))
    return inbox


def configure(project: Project, inbox: Path, follow: str | None) -> None:
    project.configure(
        f"""
        [job:files]
        uses = jobs_fixture.filerec:filerec
        watch = {inbox}
        settle = 0
        rescan = 10m
        out = {project.root / "seen.txt"}
        """
        + (f"follow_symlinks = {follow}\n" if follow else "")
    )


def seen(project: Project) -> list[str]:
    path = project.root / "seen.txt"
    return sorted(line.split()[0] for line in path.read_text().splitlines()) if path.exists() else []


EXPECTED = {None: ["a.txt"], "true": ["a.txt", "deep-link.txt", "inside-link.txt"]}


@pytest.mark.parametrize("follow", [None, "true"], ids=["default", "follow_symlinks"])
def test_a_manual_run_takes_regular_files_only(sqlite_project: Project, follow: str | None):
    inbox = hostile_inbox(sqlite_project)
    configure(sqlite_project, inbox, follow)
    done = sqlite_project.runner("run", "files")
    assert done.returncode == 0, done
    assert seen(sqlite_project) == EXPECTED[follow]
    assert "not yours" not in sqlite_project.runner("logs", str(sqlite_project.only_run()["id"])).stdout


@pytest.mark.parametrize("follow", [None, "true"], ids=["default", "follow_symlinks"])
def test_the_daemon_hands_out_regular_files_only(sqlite_project: Project, follow: str | None):
    project = sqlite_project
    inbox = hostile_inbox(project)
    configure(project, inbox, follow)
    daemon = project.start("daemon")
    # Everything is there before the daemon starts: its first listing sees all of it at once,
    # so what it hands out is complete when the expected files are done.
    wait_until(lambda: len(seen(project)) >= len(EXPECTED[follow]), "the regular files to be processed")
    wait_until(
        lambda: all(r["status"] not in ("queued", "running") for r in project.history("files")),
        "the run to end",
    )
    daemon.send_signal(signal.SIGTERM)
    assert project.finish(daemon).returncode == 0
    assert seen(project) == EXPECTED[follow]
