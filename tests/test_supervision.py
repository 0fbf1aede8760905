"""The supervisor records, the child works: failures, hard exits, signals, timeouts and a dying
supervisor all end up in the history with their cause, and leave no process behind."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import DEADLINE_S, Gate, Project, assert_processes_gone, process_gone, read_pid


def sleeper_config(project: Project, *, timeout: str | None = None) -> None:
    """Configure [job:sleeper] to write its pids under the project."""
    lines = ["[job:sleeper]", f"pid_dir = {project.pid_dir()}"]
    if timeout:
        lines.append(f"timeout = {timeout}")
    project.configure("\n".join(lines))


def sleeper_pids(project: Project) -> dict[str, int]:
    """The pids of the job process and of its grandchild, once the job has written them."""
    return {
        "job process": read_pid(project.pid_dir() / "job.pid"),
        "grandchild": read_pid(project.pid_dir() / "grandchild.pid"),
    }


def running_pids(project: Project) -> dict[str, int]:
    """sleeper_pids, checked to be alive: a later 'gone' then proves the kill, not a slow start."""
    pids = sleeper_pids(project)
    for name, pid in pids.items():
        assert not process_gone(pid), f"the {name} (pid {pid}) should still be running"
    return pids


def test_exception_fails_the_run_with_its_message_and_logs_the_traceback(project: Project) -> None:
    done = project.runner("run", "fail", "-p", "message=the disk is full")

    assert done.returncode == 1, done
    row = project.only_run()
    assert row["status"] == "failed"
    assert row["exit_code"] == 1
    assert row["error"] == "RuntimeError: the disk is full"
    assert f"runner logs {row['id']}" in done.stderr

    logs = project.runner("logs", str(row["id"]))
    assert logs.returncode == 0, logs
    assert "Traceback (most recent call last)" in logs.stdout
    assert "in _inner" in logs.stdout
    assert "RuntimeError: the disk is full" in logs.stdout


def test_os_exit_is_a_failure_with_its_exit_code(project: Project) -> None:
    done = project.runner("run", "hard_exit", "-p", "code=7")

    assert done.returncode == 1, done
    row = project.only_run()
    assert row["status"] == "failed"
    assert row["exit_code"] == 7
    assert "exit code 7" in row["error"]


def test_sigkill_inside_the_job_is_a_failure_naming_sigkill(project: Project) -> None:
    done = project.runner("run", "self_kill")

    assert done.returncode == 1, done
    row = project.only_run()
    assert row["status"] == "failed"
    assert row["signal"] == signal.SIGKILL
    assert "SIGKILL" in row["error"]


@pytest.mark.parametrize("ignore_term", [False, True], ids=["stops-on-sigterm", "ignores-sigterm"])
def test_timeout_stops_the_job_and_its_grandchild(project: Project, ignore_term: bool) -> None:
    sleeper_config(project, timeout="1s")

    started = time.monotonic()
    done = project.runner("run", "sleeper", "-p", f"ignore_term={ignore_term}")
    took_s = time.monotonic() - started

    assert done.returncode == 1, done
    assert took_s < 10, f"timeout = 1s, kill_grace = 1s, yet the run took {took_s:.1f}s"
    row = project.only_run()
    assert row["status"] == "timed_out"
    assert "timed out after 1s" in row["error"]
    assert_processes_gone(sleeper_pids(project))


def test_grandchild_left_behind_by_a_finished_job_is_stopped(project: Project) -> None:
    sleeper_config(project)

    done = project.runner("run", "sleeper", "-p", "seconds=0")

    assert done.returncode == 0, done
    assert project.only_run()["status"] == "succeeded"
    assert_processes_gone(sleeper_pids(project))


def test_killed_supervisor_takes_its_job_down_and_the_run_is_lost(project: Project) -> None:
    sleeper_config(project)
    supervisor = project.start("run", "sleeper")
    pids = running_pids(project)

    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(timeout=DEADLINE_S)

    assert_processes_gone(pids)
    row = project.only_run()
    assert row["status"] == "lost"
    assert f"pid {supervisor.pid}" in row["error"]
    # The dead run's overlap lease must not block the next run (overlap = skip by default).
    again = project.runner("run", "sleeper", "-p", "seconds=0", "-p", f"pid_dir={project.pid_dir('again')}")
    assert again.returncode == 0, again


@pytest.mark.parametrize("ignore_term", [False, True], ids=["stops-on-sigterm", "ignores-sigterm"])
def test_sigterm_to_the_supervisor_stops_the_job_and_exits_143(project: Project, ignore_term: bool) -> None:
    sleeper_config(project)
    supervisor = project.start("run", "sleeper", "-p", f"ignore_term={ignore_term}")
    pids = running_pids(project)

    supervisor.send_signal(signal.SIGTERM)
    done = project.finish(supervisor)

    assert done.returncode == 128 + signal.SIGTERM, done
    assert_processes_gone(pids)
    row = project.only_run()
    assert row["status"] == "killed"
    assert "SIGTERM" in row["error"]


def test_run_longer_than_stale_after_keeps_heartbeating(project: Project) -> None:
    """Every command reaps stale runs; a live run must keep its heartbeat fresh and not be reaped."""
    gate = Gate(project, heartbeat="200ms", stale_after="1s")
    supervisor = project.start("run", "gate")
    gate.wait_started(1)

    seen: list[str] = []
    watch_until = time.monotonic() + 3.0  # three times stale_after
    while time.monotonic() < watch_until:
        seen.append(project.only_run()["status"])  # `runner history` reaps stale runs first
    gate.open()
    done = project.finish(supervisor)

    assert set(seen) == {"running"}, seen
    assert done.returncode == 0, done
    assert project.only_run()["status"] == "succeeded"
