"""`runner doctor`: each kind of broken deployment is found, named on its own line with the fix,
and makes it exit 2; the shipped config of a fresh project passes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import COMMAND_TIMEOUT_S, RUNNER_BIN, Done, Project, wait_until
from test_crontab import cron_daemon, user_crontab  # noqa: F401 (fixtures: the real crontab)

from runner.doctor import cron_daemon_running
from runner.models import SCHEMA_REVISION

REPO = Path(__file__).resolve().parent.parent


def findings(done: Done, check: str) -> list[str]:
    """The lines of one check."""
    return [line for line in done.stdout.splitlines() if line[6:].split(" ", 1)[0] == check]


def only_failure(done: Done, check: str) -> str:
    """Exit 2, and the one FAIL line of the run, which belongs to `check`."""
    assert done.returncode == 2, done
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith(f"FAIL  {check} "), done
    assert "Traceback" not in done.stdout + done.stderr, done
    return failed[0]


def test_a_broken_job_module(sqlite_project: Project):
    sqlite_project.configure("[job:echo]", job_packages="jobs_fixture jobs_broken")
    line = only_failure(sqlite_project.runner("doctor"), "jobs")
    assert (
        "module jobs_broken.broken failed to import: RuntimeError: this module is broken on purpose" in line
    )
    assert (
        f"; fix: fix the module or the section it names (`runner --config {sqlite_project.config_path} list`"
        in line
    )


def test_an_unreachable_database(sqlite_project: Project):
    sqlite_project.configure("[job:echo]", database="postgresql://app:s3cret@127.0.0.1:1/runner")
    done = sqlite_project.runner("doctor")
    line = only_failure(done, "database")
    assert "cannot use database postgresql+psycopg://app:***@127.0.0.1:1/runner" in line
    assert "Connection refused" in line
    assert line.endswith(
        "; fix: correct [runner] database, or start the database server and let this host reach it"
    )
    assert "s3cret" not in done.stdout + done.stderr


@pytest.mark.parametrize("how", ["under-a-file", "read-only-folder"])
def test_an_unwritable_log_dir(sqlite_project: Project, how: str):
    project = sqlite_project
    if how == "under-a-file":
        blocker = project.root / "blocker"
        blocker.write_text("a file where a folder should be")
        log_dir, expected = blocker / "log", f"{blocker / 'log'} cannot be made: {blocker} is not a folder"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder anyway")
        log_dir = project.root / "logs"
        log_dir.mkdir(mode=0o500)
        expected = f"{log_dir} is not writable by this user"
    project.configure("[job:echo]", log_dir=str(log_dir))
    line = only_failure(project.runner("doctor"), "log_dir")
    assert f"FAIL  log_dir   {expected}; fix: " in line
    assert "[runner] log_dir" in line


def test_a_stale_crontab_block(sqlite_project: Project, user_crontab: str):  # noqa: F811
    project = sqlite_project
    project.configure("[job:echo]\nschedule = cron * * * * *\n")
    assert project.runner("crontab", "install").returncode == 0
    assert findings(project.runner("doctor"), "crontab") == [
        "ok    crontab   the installed block matches the config"
    ]
    project.configure("[job:echo]\nschedule = cron 5 * * * *\n")  # edited, not installed again
    line = only_failure(project.runner("doctor"), "crontab")
    assert line == (
        "FAIL  crontab   the installed block is stale: 1 line(s) of the config missing from it, "
        f"1 line(s) in it no longer configured; fix: runner --config {project.config_path} crontab install"
    )
    assert project.runner("crontab", "install").returncode == 0
    assert project.runner("doctor").returncode == 0


def test_an_installed_block_with_no_cron_daemon_running(sqlite_project: Project, user_crontab: str):  # noqa: F811
    """A container or a host without cron: the installed lines would never fire."""
    project = sqlite_project
    project.configure("[job:echo]\nschedule = cron * * * * *\n")
    assert project.runner("crontab", "install").returncode == 0
    subprocess.run(["pkill", "-x", "cron"], check=True)
    try:
        wait_until(lambda: not cron_daemon_running(), "cron to stop")
        line = only_failure(project.runner("doctor"), "crontab")
    finally:
        subprocess.run(["cron"], check=True)
        wait_until(cron_daemon_running, "cron to start again")
    assert line.startswith(
        "FAIL  crontab   the installed block matches the config, but no cron daemon runs on this host "
        "(looked for a process named cron, crond, fcron): its lines never fire; fix: start cron"
    ), line
    assert f"or run `runner --config {project.config_path} daemon` instead" in line
    assert project.runner("doctor").returncode == 0


def test_a_cron_daemon_is_a_live_process_named_cron_crond_or_fcron(tmp_path: Path):
    """Read from /proc/PID/stat as the kernel writes it (a name in parentheses may hold spaces
    and parentheses); a zombie cron (stopped, not yet reaped) runs nothing."""
    proc = tmp_path / "proc"

    def processes(*stats: str) -> bool:
        for old in proc.glob("*/stat"):
            old.unlink()
        for pid, stat in enumerate(stats, start=100):
            (proc / str(pid)).mkdir(parents=True, exist_ok=True)
            (proc / str(pid) / "stat").write_text(f"{pid} {stat} 1 100 100 0 -1\n")
        return cron_daemon_running(proc)

    assert processes("(bash) S", "(crond) S") is True
    assert processes("(fcron) R") is True
    assert processes("(cron) Z", "(cron) X") is False
    assert processes("(cronjob) S", "(my (cron)) S", "(anacron) S") is False


def test_a_missing_watch_folder(sqlite_project: Project):
    project = sqlite_project
    inbox = project.root / "inbox"
    project.configure(
        f"[job:files]\nuses = jobs_fixture.filerec:filerec\nwatch = {inbox}\nout = {project.root / 'o'}\n"
    )
    line = only_failure(project.runner("doctor"), "watch")
    assert line == (
        f"FAIL  watch     [job:files] {inbox} is not a folder (create it, or fix `watch`); "
        f"fix: mkdir -p {inbox}, or correct `watch` in [job:files]"
    )
    inbox.mkdir()
    done = project.runner("doctor")
    assert done.returncode == 0, done
    assert findings(done, "watch") == [f"ok    watch     [job:files] {inbox} readable"]
    assert findings(done, "inotify")[0].startswith(
        "ok    inotify   the watched folders need 1 of fs.inotify."
    )


def test_a_config_that_does_not_load_is_the_only_finding(sqlite_project: Project):
    project = sqlite_project
    project.configure("[job:x]\ntimeout = ten\n")
    done = project.runner("doctor", "--json")
    assert done.returncode == 2, done
    assert done.json() == {
        "ok": False,
        "checks": [
            {
                "check": "config",
                "level": "FAIL",
                "message": f"{project.config_path}: [job:x] timeout = 'ten': expected a duration like 90s, 15m, 2h",
                "fix": "correct the file as the message says, then run `runner doctor` again",
            }
        ],
    }


def test_the_shipped_config_of_a_fresh_project_passes(tmp_path: Path):
    """As a new user has it: config/ and jobs/ copied, nothing run yet; doctor creates nothing."""
    app = tmp_path / "app"
    shutil.copytree(REPO / "config", app / "config")
    shutil.copytree(REPO / "jobs", app / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("RUNNER_CONFIG", "PYTHONPATH")}
    env["PYTHONPATH"] = str(app)
    done = subprocess.run(
        [str(RUNNER_BIN), "doctor"],
        capture_output=True,
        text=True,
        cwd=app,
        env=env,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert [line.split()[1] for line in lines] == [
        "config", "jobs", "database", "var_dir", "log_dir", "watch", "crontab", "systemd", "metrics",
    ], lines  # fmt: skip
    assert all(line.startswith(("ok ", "warn ")) for line in lines), lines
    assert "4 import and bind their settings: hello, ingest_images, poll_api, weekly_report" in lines[1]
    assert sorted(p.name for p in app.iterdir()) == ["config", "jobs"]  # no var/, no database


def test_a_unit_that_differs_from_what_systemd_unit_writes(sqlite_project: Project, tmp_path: Path):
    from runner.config import load_settings
    from runner.doctor import Places, run_doctor
    from runner.systemd import render_unit

    project = sqlite_project
    project.configure("[job:echo]")
    units = tmp_path / "units"
    units.mkdir()
    unit = units / "runner.service"
    current = render_unit(load_settings(project.config_path), user_unit=True)
    unit.write_text(current)
    (units / "other.service").write_text("[Service]\nExecStart=/bin/true\n")  # someone else's
    places = Places(system_units=tmp_path / "none", user_units=units)

    def systemd_lines() -> list[str]:
        found = run_doctor(str(project.config_path), emit=lambda _f: None, places=places)
        return [f.line() for f in found if f.check == "systemd"]

    assert systemd_lines() == [f"ok    systemd   {unit} matches `runner systemd-unit`"]
    unit.write_text(current.replace("RestartSec=5s\n", ""))
    [line] = systemd_lines()
    assert line.startswith(
        f"warn  systemd   {unit} differs from what `runner systemd-unit` writes now (1 line(s) missing"
    )
    assert (
        f"fix: runner --config {project.config_path} systemd-unit --user > {unit} && systemctl --user daemon-reload"
        in line
    )


def test_the_database_and_clock_lines_of_a_used_database(project: Project, backend: str):
    project.configure("[job:echo]")
    assert project.runner("run", "echo").returncode == 0
    done = project.runner("doctor")
    assert done.returncode == 0, done
    [database] = findings(done, "database")
    assert database.startswith("ok    database  ") and database.endswith(
        f"answers, schema at revision {SCHEMA_REVISION}"
    )
    [clock] = findings(done, "clock")
    if backend == "sqlite":
        assert (
            clock == "ok    clock     embedded SQLite: this host's clock is the only one (nothing to compare)"
        )
    else:  # the server runs on this machine: one clock
        assert clock.startswith("ok    clock     this host's clock is 0.0") and clock.endswith("(within 1s)")
