"""`runner daemon`: fires through the one execution path, catch-up, reload, shutdown, status."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import Project, assert_processes_gone, process_gone, read_pid, stop, wait_until

from runner.triggers import fire_key


def configure_tick(project: Project, schedule: str, *, out: Path, extra: str = "", **runner: str) -> None:
    project.configure(
        f"""
        [job:tick]
        uses = jobs_fixture.ticks:tick
        schedule = {schedule}
        out = {out}
        {extra}
        """,
        timezone="UTC",
        **runner,
    )


def test_every_second_for_ten_seconds_gives_distinct_fires(project: Project):
    out = project.root / "ticks.txt"
    configure_tick(project, "every 1s", out=out)
    daemon = project.start("daemon")
    wait_until(out.exists, "the first fire")
    first = time.monotonic()
    time.sleep(10 - (time.monotonic() - first) + 0.5)
    stopping = fire_key(datetime.now(UTC).replace(microsecond=0))
    stop(project, daemon)
    rows = [r for r in project.history("tick") if r["trigger"] == "schedule"]
    keys = [r["fire_key"] for r in rows]

    # A run that took longer than a second (a loaded machine) makes the next fire an overlap skip;
    # a daemon slow to start (a loaded machine) coalesces the fires due before its scheduler ran.
    def startup(r: dict) -> bool:
        return r["reason"] == "coalesced" and "while no scheduler ran" in (r["error"] or "")

    def explained(r: dict) -> bool:
        return r["reason"] in ("overlap", "shutdown") or startup(r)

    # Every second from the first run's fire to the stop has exactly one row: a run, or a skip
    # saying why (a fire due while the daemon was stopping is a shutdown skip).
    opened = min(r["fire_key"] for r in rows if r["status"] == "succeeded")
    seconds = (datetime.fromisoformat(stopping) - datetime.fromisoformat(opened)).total_seconds()
    in_window = [r for r in rows if opened <= r["fire_key"] <= stopping]
    assert len(in_window) == seconds + 1 >= 10, (opened, stopping, keys)
    assert len(set(keys)) == len(keys)
    assert all(r["status"] == "succeeded" or explained(r) for r in rows), [
        (r["fire_key"], r["status"], r["reason"], r["error"]) for r in rows
    ]
    assert sum(r["status"] == "succeeded" for r in rows) >= 5, rows
    # each fire key is a whole second: the scheduled instant, not the time the run happened to start
    assert all(k.endswith("Z") and len(k) == 20 for k in keys), keys
    served = out.read_text().split()
    assert set(served[0::3]) == {r["fire_key"] for r in rows if r["status"] == "succeeded"}


def test_sigterm_lets_the_job_finish_within_grace_then_kills_it(sqlite_project: Project):
    project = sqlite_project
    pid_dir = project.root / "pids"
    project.configure(
        f"""
        [job:slow]
        uses = jobs_fixture.sleeper:sleeper
        schedule = every 1s
        pid_dir = {pid_dir}
        seconds = 120
        """,
        shutdown_grace="3s",
    )
    daemon = project.start("daemon")
    pids = {"job": read_pid(pid_dir / "job.pid"), "grandchild": read_pid(pid_dir / "grandchild.pid")}
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    done = project.finish(daemon)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done
    assert elapsed < 3 + 2, f"daemon took {elapsed:.1f}s to stop with shutdown_grace = 3s"
    assert_processes_gone(pids)
    statuses = {r["status"] for r in project.history("slow")}
    assert "killed" in statuses, project.history("slow")
    assert "running" not in statuses


def test_status_shows_a_live_daemon_and_forgets_a_stopped_one(sqlite_project: Project):
    project = sqlite_project
    out = project.root / "ticks.txt"
    configure_tick(
        project, "every 1h start 2020-01-01 00:00", out=out, extra="seconds = 2", shutdown_grace="10s"
    )
    daemon = project.start("daemon")
    done = project.runner("run", "tick")  # a manual run holds nothing up; the daemon is idle
    assert done.returncode == 0, done
    wait_until(lambda: project.runner("status", "--json").json()["daemons"], "the daemon's heartbeat row")
    stop(project, daemon)
    assert project.runner("status", "--json").json()["daemons"] == []


def test_sighup_with_a_broken_config_keeps_the_old_schedule(sqlite_project: Project):
    project = sqlite_project
    out = project.root / "ticks.txt"
    configure_tick(project, "every 1s", out=out)
    daemon = project.start("daemon")
    wait_until(out.exists, "the first fire")
    project.write_config(project.config_path.read_text() + "\n[job:broken\nschedule = every 1s\n")
    daemon.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    before = len(out.read_text().splitlines())
    time.sleep(3)
    after = len(out.read_text().splitlines())
    stop(project, daemon)
    assert after >= before + 2, "the old schedule stopped firing after a bad reload"


@pytest.mark.parametrize(
    "broken",
    [
        "\n[job:huge]\nuses = jobs_fixture.ticks:tick\nschedule = every 500000w\n",
        "\n[job:tiny]\nuses = jobs_fixture.ticks:tick\nschedule = every 0.0001s\n",
        "[runner]\nheartbeat = 99999999999999w\n",
    ],
    ids=["every-500000w", "every-0.0001s", "heartbeat-in-a-job"],
)
def test_sighup_with_an_out_of_range_value_never_kills_the_daemon(sqlite_project: Project, broken: str):
    project = sqlite_project
    out = project.root / "ticks.txt"
    configure_tick(project, "every 1s", out=out)
    daemon = project.start("daemon")
    wait_until(out.exists, "the first fire")
    text = project.config_path.read_text()
    if broken.startswith("[runner]"):
        text = text.replace("[runner]\n", broken, 1)
    else:
        text += broken
    project.write_config(text)
    daemon.send_signal(signal.SIGHUP)
    seen = len(out.read_text().splitlines())
    wait_until(lambda: len(out.read_text().splitlines()) >= seen + 2, "two more fires after the reload")
    assert daemon.poll() is None
    daemon.send_signal(signal.SIGTERM)
    done = project.finish(daemon)
    assert done.returncode == 0, done
    assert "reload failed, keeping the previous schedules" in done.stderr, done
    assert "Traceback" not in done.stderr, done


def test_sighup_with_a_good_config_applies_the_new_schedule(sqlite_project: Project):
    project = sqlite_project
    out = project.root / "ticks.txt"
    other = project.root / "other.txt"
    configure_tick(project, "every 1h start 2020-01-01 00:00", out=out)
    daemon = project.start("daemon")
    wait_until(lambda: project.runner("status", "--json").json()["daemons"], "the daemon to be up")
    configure_tick(project, "every 1s", out=other)
    daemon.send_signal(signal.SIGHUP)
    wait_until(other.exists, "a fire of the reloaded schedule")
    stop(project, daemon)


def test_catch_up_runs_one_late_fire_within_the_window(project: Project):
    out = project.root / "ticks.txt"
    configure_tick(project, "every 2s", out=out, extra="catchup = 1h")
    daemon = project.start("daemon")
    wait_until(out.exists, "the first fire")
    stop(project, daemon)
    # Fires of the gap only: a first daemon slow to start (a loaded machine) rightly runs one late
    # fire of its own start-up, which must not be taken for the second daemon's catch-up.
    stopped = fire_key(datetime.now(UTC))
    time.sleep(4.5)  # two scheduled fires pass while no daemon runs

    def caught_up() -> list[dict]:
        return [r for r in project.history("tick") if r["late"] and r["fire_key"] > stopped]

    daemon = project.start("daemon")
    wait_until(caught_up, "the late catch-up run")
    stop(project, daemon)
    late = caught_up()
    assert len(late) == 1, late
    assert late[0]["status"] == "succeeded"
    assert late[0]["trigger"] == "schedule"


def test_catch_up_zero_runs_nothing_and_status_reports_the_miss(sqlite_project: Project):
    project = sqlite_project
    out = project.root / "ticks.txt"
    configure_tick(project, "every 2s", out=out, extra="catchup = 0")
    daemon = project.start("daemon")
    wait_until(out.exists, "the first fire")
    stop(project, daemon)
    served_before = len(out.read_text().splitlines())
    time.sleep(4.5)
    daemon = project.start("daemon")
    wait_until(lambda: any(r["status"] == "skipped" for r in project.history("tick")), "the recorded miss")
    stop(project, daemon)
    rows = project.history("tick")
    missed = [r for r in rows if r["status"] == "skipped"]
    assert missed and "missed" in missed[0]["error"], rows
    newest_missed = max(r["fire_key"] for r in missed)
    assert not any(r["status"] == "succeeded" and r["fire_key"] == newest_missed for r in rows)
    # no late run served a missed fire
    served = out.read_text().splitlines()
    assert all(line.endswith("False") for line in served[served_before:]), served
    status = project.runner("status")
    assert status.returncode == 0, status
    assert "missed the fire" in status.stdout, status
    assert any("missed" in (p["error"] or "") for p in project.runner("status", "--json").json()["problems"])


def test_daemon_and_crontab_line_share_fire_keys(sqlite_project: Project):
    """A fire the daemon ran is not run again by a crontab line for the same minute (exit 3)."""
    project = sqlite_project
    out = project.root / "ticks.txt"
    configure_tick(project, "cron * * * * *", out=out)
    key = "2026-01-05T07:00:00Z"
    first = project.runner("run", "tick", "--from-cron", "--fire-at", key)
    assert first.returncode == 0, first
    again = project.runner("run", "tick", "--from-cron", "--fire-at", key)
    assert again.returncode == 3, again
    assert "already ran" in again.stderr


def test_next_shows_moved_dst_fires(sqlite_project: Project):
    project = sqlite_project
    project.configure(
        """
        [job:berlin]
        uses = jobs_fixture.echo:echo
        schedule = at 2036-03-30 02:30
        timezone = Europe/Berlin
        """
    )
    done = project.runner("next", "berlin", "--json")
    assert done.returncode == 0, done
    fire = done.json()[0]["fires"][0]
    assert fire["utc"] == "2036-03-30T01:00:00Z"
    assert "does not exist" in fire["dst"]
    table = project.runner("next", "berlin")
    assert "03:00:00 CEST" in table.stdout and "does not exist" in table.stdout, table


def test_status_lists_running_runs(sqlite_project: Project):
    project = sqlite_project
    pid_dir = project.root / "pids"
    project.configure(
        f"""
        [job:slow]
        uses = jobs_fixture.sleeper:sleeper
        pid_dir = {pid_dir}
        seconds = 60
        """
    )
    run = project.start("run", "slow")
    read_pid(pid_dir / "job.pid")
    status = project.runner("status", "--json").json()
    assert [r["job"] for r in status["running"]] == ["slow"]
    run.send_signal(signal.SIGTERM)
    done = project.finish(run)
    assert done.returncode == 128 + signal.SIGTERM, done
    assert project.only_run("slow")["status"] == "killed"


def test_sd_notify_ready_watchdog_and_stopping(sqlite_project: Project, tmp_path: Path):
    """Type=notify: the daemon tells systemd it is ready, alive, and stopping."""
    import socket

    project = sqlite_project
    configure_tick(project, "every 1h start 2020-01-01 00:00", out=project.root / "ticks.txt", heartbeat="1s")
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(30)
    project.environ.update(NOTIFY_SOCKET=address, WATCHDOG_USEC="2000000")
    daemon = project.start("daemon")
    messages: list[str] = []
    try:
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        stop(project, daemon)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
    finally:
        listener.close()
    assert messages[0].startswith("READY=1"), messages
    assert "STATUS=firing tick" in messages[0]


class TerminalDaemon:
    """`runner daemon` started from a terminal, as a user does: a pseudo-terminal is its
    controlling terminal and its process group the foreground one, so ^C is a real Ctrl-C."""

    def __init__(self, project: Project) -> None:
        import fcntl
        import os
        import pty
        import subprocess
        import termios
        import threading

        self.controller, terminal = pty.openpty()

        def own_terminal() -> None:
            os.setsid()
            fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            project.argv(("daemon",)),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=project.env(),
            cwd=project.root,
            preexec_fn=own_terminal,
        )
        project._processes.append(self.process)
        os.close(terminal)
        self.output = bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        import os

        while True:
            try:
                chunk = os.read(self.controller, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def ctrl_c(self) -> None:
        import os

        os.write(self.controller, b"\x03")

    def wait(self) -> int:
        from conftest import COMMAND_TIMEOUT_S

        return self.process.wait(timeout=COMMAND_TIMEOUT_S)

    def printed(self, text: str) -> bool:
        return text.encode() in self.output


def configure_gate(project: Project, shutdown_grace: str) -> tuple[Path, Path]:
    started, release = project.root / "started.txt", project.root / "release"
    project.configure(
        f"""
        [job:gate]
        schedule = every 1s
        started = {started}
        release = {release}
        """,
        shutdown_grace=shutdown_grace,
    )
    return started, release


def test_ctrl_c_stops_the_daemon_gracefully_and_never_reaches_the_job(sqlite_project: Project):
    project = sqlite_project
    started, release = configure_gate(project, shutdown_grace="10m")
    daemon = TerminalDaemon(project)
    wait_until(started.exists, "the gate job to start")

    daemon.ctrl_c()
    wait_until(lambda: daemon.printed("stopping: no new fires"), "the daemon to start stopping")
    job_pid = int(started.read_text().split()[0])
    still_running = not process_gone(job_pid)
    release.touch()
    code = daemon.wait()

    assert still_running, "Ctrl-C reached the job"
    assert code == 0, daemon.output.decode(errors="replace")
    runs = [r for r in project.history("gate") if r["status"] != "skipped"]
    assert [r["status"] for r in runs] == ["succeeded"], runs


def test_a_second_ctrl_c_kills_the_running_jobs_now(sqlite_project: Project):
    project = sqlite_project
    started, _ = configure_gate(project, shutdown_grace="10m")
    daemon = TerminalDaemon(project)
    wait_until(started.exists, "the gate job to start")

    daemon.ctrl_c()
    wait_until(lambda: daemon.printed("Ctrl-C again kills them now"), "the daemon to start stopping")
    daemon.ctrl_c()
    code = daemon.wait()

    assert code == 0, daemon.output.decode(errors="replace")
    assert_processes_gone({"job": int(started.read_text().split()[0])})
    runs = [r for r in project.history("gate") if r["status"] != "skipped"]
    assert [r["status"] for r in runs] == ["killed"], runs
