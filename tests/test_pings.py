"""Dead-man pings in the healthchecks.io convention, to a real HTTP server on 127.0.0.1: `/start`
when a run starts, the bare URL on success, `/fail` otherwise (timeouts, kills, failed retries),
once per run, in order; a monitor that is down never changes a run's outcome."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from conftest import DEADLINE_S, Project, read_pid
from webhook import Closed, Recorder, Silent

CHECK = "/ping/5bf2-check-uuid"


@pytest.fixture
def monitor() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def configure(project: Project, url: str, extra: str = "", job: str = "jobs_fixture.wobbly:wobbly") -> None:
    project.configure(
        f"""
        [job:flaky]
        uses = {job}
        ping_url = {url}
        {extra}
        """
    )


def test_each_run_pings_start_then_success_or_fail_with_its_last_log_lines(
    project: Project, monitor: Recorder
) -> None:
    configure(project, monitor.url + CHECK)
    ok = project.runner("run", "flaky", "-p", "lines=150")
    assert ok.returncode == 0, ok
    failed = project.runner("run", "flaky", "-p", "fail=true")
    assert failed.returncode == 1, failed

    assert monitor.paths() == [f"{CHECK}/start", CHECK, f"{CHECK}/start", f"{CHECK}/fail"]
    start, success, _, fail = monitor.requests
    assert all(r.method == "POST" for r in monitor.requests)
    runs = project.history("flaky")
    assert f"run {runs[0]['id']} of job flaky started" in start.body.decode()
    body = success.body.decode()
    assert f"runner: run {runs[0]['id']} succeeded in " in body.splitlines()[-1]
    assert len(body.splitlines()) == 100  # the last 100 lines of the log: its end line and 99 of the job's
    assert body.startswith("flaky line 52\n") and "flaky line 150\n" in body
    assert "RuntimeError: flaky was told to fail" in fail.body.decode()
    assert f"run {runs[1]['id']} failed" in fail.body.decode()


def test_a_timed_out_run_pings_fail(sqlite_project: Project, monitor: Recorder) -> None:
    project = sqlite_project
    configure(project, monitor.url + CHECK, "timeout = 1s")
    done = project.runner("run", "flaky", "-p", "seconds=60")
    assert done.returncode == 1, done
    assert project.only_run("flaky")["status"] == "timed_out"
    assert monitor.paths() == [f"{CHECK}/start", f"{CHECK}/fail"]
    assert "timed_out" in monitor.requests[1].body.decode()


def test_a_run_whose_supervisor_is_stopped_pings_fail(sqlite_project: Project, monitor: Recorder) -> None:
    project = sqlite_project
    pid_dir = project.pid_dir()
    configure(project, monitor.url + CHECK, f"pid_dir = {pid_dir}", job="jobs_fixture.sleeper:sleeper")
    supervisor = project.start("run", "flaky")
    read_pid(pid_dir / "job.pid")
    assert monitor.paths() == [f"{CHECK}/start"]
    supervisor.send_signal(signal.SIGTERM)
    done = project.finish(supervisor)
    assert done.returncode == 128 + signal.SIGTERM, done
    assert project.only_run("flaky")["status"] == "killed"
    assert monitor.paths() == [f"{CHECK}/start", f"{CHECK}/fail"]


def test_retries_ping_start_once_and_the_result_once(sqlite_project: Project, monitor: Recorder) -> None:
    """A monitor times the whole run: its retries are inside it."""
    project = sqlite_project
    configure(project, monitor.url + CHECK, "retries = 2\nretry_backoff = 0s")
    done = project.runner("run", "flaky", "-p", "fail=true")
    assert done.returncode == 1, done
    assert [r["attempt"] for r in project.history("flaky")] == [1, 2, 3]
    assert monitor.paths() == [f"{CHECK}/start", f"{CHECK}/fail"]


def test_pings_keep_a_query_string_last(sqlite_project: Project, monitor: Recorder) -> None:
    project = sqlite_project
    configure(project, monitor.url + CHECK + "?create=1")
    assert project.runner("run", "flaky").returncode == 0
    assert monitor.paths() == [f"{CHECK}/start?create=1", f"{CHECK}?create=1"]


@pytest.mark.parametrize("down", [Closed, Silent], ids=["refused", "never-answers"])
def test_a_down_monitor_changes_nothing_about_the_run(
    sqlite_project: Project, down: type[Closed] | type[Silent]
) -> None:
    project = sqlite_project
    endpoint = down()
    try:
        configure(project, endpoint.url + CHECK, "ping_timeout = 1s")
        started = time.monotonic()
        done = project.runner("run", "flaky")
        took_s = time.monotonic() - started
    finally:
        endpoint.close()
    assert done.returncode == 0, done
    assert took_s < DEADLINE_S, took_s  # without a timeout a silent monitor would hold it for ever
    run = project.only_run("flaky")
    assert run["status"] == "succeeded" and run["result"] == "fine"
    assert "5bf2-check-uuid" not in done.stderr
    undelivered = project.runner("status", "--json").json()["undelivered"]
    assert sorted(n["error"].split(":")[0] for n in undelivered) == ["start ping", "success ping"]
    assert all(n["run_id"] == run["id"] and n["event"] == "ping" for n in undelivered)
    assert not any("5bf2-check-uuid" in n["error"] for n in undelivered)


def test_a_run_without_ping_url_or_notify_imports_neither(sqlite_project: Project) -> None:
    import json
    import subprocess
    import sys

    project = sqlite_project
    project.configure("[job:flaky]\nuses = jobs_fixture.wobbly:wobbly\n")
    probe = (
        "import sys, json\n"
        "from runner.cli import main\n"
        "try:\n"
        f"    main(['--config', {str(project.config_path)!r}, 'run', 'flaky'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "new = ('runner.channels', 'runner.mail', 'runner.notify', 'runner.pings', 'urllib.request', 'smtplib')\n"
        "print(json.dumps(sorted(m for m in new if m in sys.modules)), file=sys.__stderr__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=project.env(), timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
    assert project.only_run("flaky")["status"] == "succeeded"
