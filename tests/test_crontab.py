"""Crontab lines: the managed block, a real Debian cron daemon firing them, cron.d files, systemd."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import RUNNER_BIN, Project, assert_one_line_error, wait_until

from runner.triggers import fire_key

REPO = Path(__file__).resolve().parent.parent
FOREIGN_BEFORE = '# a colleague\'s line, kept byte for byte\nMAILTO=""\n17 3 * * * /bin/true  # nightly %s\n'
FOREIGN_AFTER = "\n*/5 * * * * /bin/echo  'spaces   kept' > /dev/null\n"
CRON_WAIT_S = 130.0
DEBIAN_SPOOL = Path("/var/spool/cron/crontabs")


def _cron_running() -> bool:
    """A cron process that is not a zombie (this machine's init reaps them about once a second)."""
    states = subprocess.run(["ps", "-C", "cron", "-o", "stat="], capture_output=True, text=True).stdout
    return any(not state.startswith("Z") for state in states.split())


def _to_the_start_of_a_second() -> int:
    """Sleep to just after the clock's next whole second; returns that second."""
    time.sleep(1.02 - time.time() % 1)
    return int(time.time())


def _restart_cron_at_a_second_start() -> int:
    """Restart Debian's cron just after a whole second; returns the second of its next look.

    It reads the tables at start, then sleeps to second :01 of the next minute (keeping the
    start's fraction of a second) and reads them again there, once a minute."""
    subprocess.run(["pkill", "-x", "cron"], capture_output=True)
    wait_until(lambda: not _cron_running(), "cron to stop")
    started = _to_the_start_of_a_second()
    subprocess.run(["cron"], check=True)
    return (started // 60 + 1) * 60 + 1


@pytest.fixture(scope="session")
def cron_daemon() -> None:
    """Debian's cron, installed and started by the test set-up when this machine allows it."""
    if not shutil.which("cron") or not shutil.which("crontab"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("cron is not installed and cannot be (needs root and apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "cron"]
        if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
            if done.returncode != 0:
                pytest.skip(f"could not install cron: {done.stderr.strip()[-300:]}")
    if not _cron_running():
        if os.geteuid() != 0:
            pytest.skip("cron is installed but not running, and starting it needs root")
        subprocess.run(["cron"], check=True)
        wait_until(_cron_running, "cron to start")


@pytest.fixture
def user_crontab(cron_daemon: None, crontab_lock: None) -> Iterator[str]:
    """The user's crontab holding foreign lines for the test; the original is restored afterwards."""
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    original = before.stdout if before.returncode == 0 else None
    foreign = FOREIGN_BEFORE + FOREIGN_AFTER
    subprocess.run(["crontab", "-"], input=foreign, text=True, check=True)
    yield foreign
    if original is None:
        subprocess.run(["crontab", "-r"], capture_output=True)
    else:
        subprocess.run(["crontab", "-"], input=original, text=True, check=True)


@pytest.fixture
def no_crontab(cron_daemon: None, crontab_lock: None) -> Iterator[None]:
    """The user has no crontab at all during the test; the original is restored afterwards."""
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    subprocess.run(["crontab", "-r"], capture_output=True)
    yield
    if before.returncode == 0:
        subprocess.run(["crontab", "-"], input=before.stdout, text=True, check=True)
    else:
        subprocess.run(["crontab", "-r"], capture_output=True)


def crontab_text() -> str:
    return subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout


def configure_minutely(project: Project) -> None:
    # The shipped jobs package: a crontab line runs with cron's bare environment (no PYTHONPATH).
    project.configure(
        """
        [job:hello]
        schedule = cron * * * * *
        name = cron
        """,
        job_packages="jobs",
    )


def test_real_cron_fires_the_installed_line_once_per_minute(sqlite_project: Project, user_crontab: str):
    """Even when the install lands in the second in which cron last read an earlier change.

    Debian's cron sees a change only by an mtime that differs in whole seconds from the one it
    read: here the colleague's table (written by the fixture) is dated to the second of cron's
    next look, so an install in that same second would never be noticed (it failed so, now and
    then, when the fixture's write, cron's look and the install fell in one second)."""
    project = sqlite_project
    configure_minutely(project)
    if os.geteuid() == 0 and DEBIAN_SPOOL.is_dir():  # else the plain case: no restart, no dating
        look = _restart_cron_at_a_second_start()
        for path in (DEBIAN_SPOOL / getpass.getuser(), DEBIAN_SPOOL):
            os.utime(path, (look, look))
        time.sleep(max(0.0, look + 0.15 - time.time()))  # cron has read the colleague's table again
    installed = project.runner("crontab", "install")
    assert installed.returncode == 0, installed
    table = crontab_text()
    assert table.startswith(FOREIGN_BEFORE), table
    assert FOREIGN_AFTER.strip() in table
    assert table.count("# BEGIN runner ") == 1

    again = project.runner("crontab", "install")
    assert again.returncode == 0 and "already up to date" in again.stdout, again
    assert crontab_text() == table

    rows = wait_until(
        lambda: [
            r
            for r in project.history("hello")
            if r["trigger"] == "cron" and r["status"] not in ("queued", "running")
        ],
        "cron to fire the installed line and the run to end",
        timeout_s=CRON_WAIT_S,
    )
    run = rows[0]
    assert run["status"] == "succeeded", run
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", run["fire_key"]), run

    # The same line, run by hand for the minute cron already served, does not run again.
    line = next(x for x in table.splitlines() if x.startswith("* * * * * "))
    command = line.removeprefix("* * * * * ").split(" >>", 1)[0]
    by_hand = subprocess.run(
        ["sh", "-c", f"{command} --fire-at {run['fire_key']}"], capture_output=True, text=True, timeout=60
    )
    assert by_hand.returncode == 3, by_hand
    assert "already ran" in by_hand.stderr

    removed = project.runner("crontab", "remove")
    assert removed.returncode == 0, removed
    assert crontab_text() == user_crontab
    backups = list((project.var_dir / "crontab-backups").iterdir())
    assert any(b.read_text() == user_crontab for b in backups)


def test_install_replaces_its_own_block_in_place(sqlite_project: Project, user_crontab: str):
    project = sqlite_project
    configure_minutely(project)
    assert project.runner("crontab", "install").returncode == 0
    project.configure(
        """
        [job:hello]
        schedule = cron 5 4 * * sun
        """,
        job_packages="jobs",
    )
    assert project.runner("crontab", "install").returncode == 0
    table = crontab_text()
    assert table.count("# BEGIN runner ") == 1
    assert "\n5 4 * * sun " in table and "\n* * * * * env" not in table
    assert table.startswith(FOREIGN_BEFORE) and table.rstrip().endswith("# END runner")


def test_lines_escape_percent_and_refuse_a_foreign_timezone(sqlite_project: Project):
    project = sqlite_project
    project.configure(
        """
        [job:hello]
        schedule = cron 0 7 * * mon
        """,
        job_packages="jobs",
        log_dir="logs%Y",
    )
    shown = project.runner("crontab", "show")
    assert shown.returncode == 0, shown
    assert "logs\\%Y/cron/hello.log" in shown.stdout
    assert "@reboot " in shown.stdout and " catchup " in shown.stdout
    project.configure(
        """
        [job:hello]
        schedule = cron 0 7 * * mon
        timezone = Pacific/Chatham
        """,
        job_packages="jobs",
    )
    refused = project.runner("crontab", "show")
    assert refused.returncode == 2, refused
    assert "runner daemon" in refused.stderr and "Traceback" not in refused.stderr


def test_crontab_changes_land_in_a_later_second_than_the_change_before(
    sqlite_project: Project, user_crontab: str
):
    from runner.config import load_settings
    from runner.crontab import install, remove

    if not DEBIAN_SPOOL.is_dir():
        pytest.skip("needs Debian's cron spool")
    configure_minutely(sqlite_project)
    settings = load_settings(sqlite_project.config_path)
    _to_the_start_of_a_second()
    subprocess.run(["crontab", "-"], input=user_crontab, text=True, check=True)  # a change this second
    before = DEBIAN_SPOOL.stat().st_mtime
    assert install(settings)[0]
    installed = DEBIAN_SPOOL.stat().st_mtime
    assert int(installed) > int(before), (before, installed)
    assert remove(settings)[0]  # at once: in the second of the install
    assert int(DEBIAN_SPOOL.stat().st_mtime) > int(installed)
    assert crontab_text() == user_crontab


def test_cron_d_changes_land_in_a_later_second_than_the_change_before(
    sqlite_project: Project, tmp_path: Path
):
    from runner.config import load_settings
    from runner.crontab import install_cron_d, remove_cron_d

    configure_minutely(sqlite_project)
    settings = load_settings(sqlite_project.config_path)
    folder = tmp_path / "cron.d"
    folder.mkdir()
    target = folder / "runner"
    _to_the_start_of_a_second()
    (folder / "colleague").write_text("")  # another package's file, this second
    before = folder.stat().st_mtime
    assert install_cron_d(settings, target, "nobody")[0]
    installed = target.stat().st_mtime
    assert int(installed) > int(before) and int(folder.stat().st_mtime) > int(before)
    assert remove_cron_d(settings, target)[0]  # the file goes, in a later second again
    assert not target.exists()
    assert int(folder.stat().st_mtime) > int(installed)


def test_cron_d_file_has_a_user_field(sqlite_project: Project, tmp_path: Path):
    project = sqlite_project
    configure_minutely(project)
    target = tmp_path / "runner"
    done = project.runner("crontab", "install", "--file", str(target), "--user", "nobody")
    assert done.returncode == 0, done
    lines = [x for x in target.read_text().splitlines() if x and not x.startswith("#")]
    assert any(x.startswith("* * * * * nobody /usr/bin/env PATH=") for x in lines), lines
    assert any(x.startswith("@reboot nobody ") for x in lines), lines


def test_crontab_example_matches_the_shipped_config():
    done = subprocess.run(
        [
            str(RUNNER_BIN),
            "--config",
            str(REPO / "config" / "runner.ini"),
            "crontab",
            "show",
            "--placeholders",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (REPO / "crontab.example").read_text()


def test_catchup_runs_the_missed_cron_fire_late(sqlite_project: Project):
    project = sqlite_project
    project.configure(
        """
        [job:hello]
        schedule = cron * * * * *
        catchup = 1h
        """,
        job_packages="jobs",
    )
    first = project.runner("run", "hello", "--from-cron", "--fire-at", "2020-01-01T00:00:00Z")
    assert first.returncode == 0, first
    # Everything since 2020 was missed; the newest minute is within the window and runs once.
    done = project.runner("catchup", "--json")
    assert done.returncode == 0, done
    assert [row["action"] for row in done.json()] == ["ran late, exit 0"]
    late = [r for r in project.history("hello") if r["late"]]
    assert len(late) == 1 and late[0]["trigger"] == "cron", late
    assert project.runner("catchup", "--json").json() == []


def this_hour_with_a_minute_left() -> datetime:
    """The start of the current hour, once at least a minute of it is left (waiting into the next
    one if not), so that the hour a test reckons from is still the latest when runner looks."""
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    if now >= hour + timedelta(minutes=59):
        time.sleep((hour + timedelta(hours=1) - now).total_seconds() + 0.1)
        hour += timedelta(hours=1)
    return hour


def test_catchup_records_older_cron_misses_and_leaves_every_fires_to_the_daemon(sqlite_project: Project):
    project = sqlite_project
    project.configure(
        """
        [job:hello]
        schedule = cron 0 * * * *
                   every 1m
        catchup = 180m
        """,
        job_packages="jobs",
    )
    hour = this_hour_with_a_minute_left()
    first = project.runner("run", "hello", "--from-cron", "--fire-at", fire_key(hour - timedelta(hours=4)))
    assert first.returncode == 0, first
    done = project.runner("catchup", "--json")
    assert [row["action"] for row in done.json()] == ["ran late, exit 0"], done
    rows = project.history("hello")[1:]
    assert {r["trigger"] for r in rows} == {"cron"}, rows  # no `every 1m` fire: crontab never fires those
    skipped = [(r["fire_key"], r["reason"]) for r in rows if r["status"] == "skipped"]
    assert skipped == [
        (fire_key(hour - timedelta(hours=3)), "beyond catch-up"),
        (fire_key(hour - timedelta(hours=2)), "coalesced"),
        (fire_key(hour - timedelta(hours=1)), "coalesced"),
    ], rows
    assert [r["fire_key"] for r in rows if r["late"]] == [fire_key(hour)], rows


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_cleanly(sqlite_project: Project, tmp_path: Path):
    project = sqlite_project
    configure_minutely(project)
    for flags in ([], ["--user"]):
        done = project.runner("systemd-unit", *flags)
        assert done.returncode == 0, done
        assert "Type=notify" in done.stdout and "ProtectSystem=strict" in done.stdout
        unit = tmp_path / "runner-test.service"
        unit.write_text(done.stdout)
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert verify.stderr == "", verify.stderr


# --- what we write is safe for cron and systemd (hardening) -------------------------------------

ODD_FOLDER = "my proj 100% ünï"


def odd_project(tmp_path: Path) -> Project:
    """A project living under a path with spaces, a `%` and non-ASCII letters."""
    return Project(
        tmp_path / ODD_FOLDER / "project", f"sqlite:///{tmp_path / ODD_FOLDER / 'db' / 'runner.db'}"
    )


def test_real_cron_runs_our_lines_under_an_odd_path_and_a_bare_crontab_path(
    tmp_path: Path, user_crontab: str
):
    # The user's crontab sets its own PATH without /usr/bin: our lines call everything by full path.
    foreign = "PATH=/nonexistent\n" + user_crontab
    subprocess.run(["crontab", "-"], input=foreign, text=True, check=True)
    project = odd_project(tmp_path)
    configure_minutely(project)
    shown = project.runner("crontab", "show")
    assert shown.returncode == 0, shown
    assert " env " not in shown.stdout and "100\\% " in shown.stdout, shown.stdout
    installed = project.runner("crontab", "install")
    assert installed.returncode == 0, installed
    table = crontab_text()
    assert table.startswith(foreign) and shown.stdout in table, table
    rows = wait_until(
        lambda: [
            r
            for r in project.history("hello")
            if r["trigger"] == "cron" and r["status"] not in ("queued", "running")
        ],
        "cron to fire the line of a project under an odd path",
        timeout_s=CRON_WAIT_S,
    )
    assert rows[0]["status"] == "succeeded", rows
    assert project.runner("crontab", "remove").returncode == 0
    assert crontab_text() == foreign
    backups = project.var_dir / "crontab-backups"
    assert backups.stat().st_mode & 0o777 == 0o700
    assert all(b.stat().st_mode & 0o777 == 0o600 for b in backups.iterdir())


def test_remove_leaves_no_crontab_when_there_was_none(sqlite_project: Project, no_crontab: None):
    configure_minutely(sqlite_project)
    assert sqlite_project.runner("crontab", "install").returncode == 0
    assert "# BEGIN runner " in crontab_text()
    removed = sqlite_project.runner("crontab", "remove")
    assert removed.returncode == 0, removed
    listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    assert listed.returncode != 0 and "no crontab" in listed.stderr, listed


@pytest.mark.parametrize(
    ("runner", "config_folder"),
    [
        ({"log_dir": "../var/log\n  * * * * * root touch /tmp/pwned #"}, "conf"),
        ({}, "conf\n* * * * * root touch pwned #"),
        ({"log_dir": "logs\\%Y"}, "conf"),
    ],
    ids=["continuation-line-in-log_dir", "newline-in-config-folder", "backslash-before-percent"],
)
def test_values_that_would_break_a_crontab_line_are_refused(
    tmp_path: Path, runner: dict[str, str], config_folder: str
):
    project = Project(tmp_path / "project", f"sqlite:///{tmp_path / 'db' / 'runner.db'}")
    project.config_path = tmp_path / "project" / config_folder / "runner.ini"
    project.var_dir = project.config_path.parent / "var"
    project.configure("[job:hello]\nschedule = cron * * * * *", job_packages="jobs", **runner)
    target = tmp_path / "crond" / "runner"
    target.parent.mkdir()
    for args in (("crontab", "show"), ("crontab", "install", "--file", str(target)), ("systemd-unit",)):
        done = project.runner(*args)
        if args == ("systemd-unit",) and "%" in str(runner):
            assert done.returncode == 0, done  # systemd has its own escapes for those
            continue
        assert_one_line_error(done)
    assert not target.exists() and not project.var_dir.exists()


def test_timezones_compare_by_meaning_and_errors_name_where_they_are_set(sqlite_project: Project):
    project = sqlite_project
    project.configure("[job:hello]\nschedule = cron 0 7 * * mon", job_packages="jobs", timezone="UTC")
    same = project.runner("crontab", "show", env=project.env(TZ="Etc/UTC"))
    assert same.returncode == 0 and "0 7 * * mon " in same.stdout, same
    project.configure(
        "[job:hello]\nschedule = cron 0 7 * * mon", job_packages="jobs", timezone="Pacific/Chatham"
    )
    other = project.runner("crontab", "show", env=project.env(TZ="Etc/UTC"))
    assert_one_line_error(other, "[runner] timezone", "runner daemon")


def test_cron_d_files_are_refused_unless_ours_and_backed_up(sqlite_project: Project, tmp_path: Path):
    project = sqlite_project
    configure_minutely(project)
    crond = tmp_path / "cron.d"
    crond.mkdir()
    foreign = crond / "backup"
    foreign.write_text("MAILTO=ops\n0 3 * * * root /usr/local/bin/nightly\n")
    before = foreign.read_text()

    assert_one_line_error(project.runner("crontab", "install", "--file", str(foreign)), "--force")
    assert foreign.read_text() == before
    assert_one_line_error(project.runner("crontab", "install", "--file", str(crond / "missing" / "runner")))
    assert_one_line_error(project.runner("crontab", "install", "--file", str(crond / "runner.cron")), "dots")
    assert_one_line_error(
        project.runner("crontab", "install", "--file", str(crond / "runner"), "--user", "no-such-user-x")
    )
    assert_one_line_error(project.runner("crontab", "install", "--user", "nobody"), "--file")
    os.symlink("/dev/null", crond / "null")
    assert_one_line_error(project.runner("crontab", "install", "--file", str(crond / "null"), "--force"))
    (crond / "null").unlink()
    assert sorted(p.name for p in crond.iterdir()) == ["backup"]

    forced = project.runner("crontab", "install", "--file", str(foreign), "--force")
    assert forced.returncode == 0, forced
    merged = foreign.read_text()
    assert (
        merged.startswith(before) and "# BEGIN runner " in merged and foreign.stat().st_mode & 0o777 == 0o644
    )
    saved = list((project.var_dir / "crontab-backups").iterdir())
    assert [b.read_text() for b in saved] == [before]
    assert saved[0].stat().st_mode & 0o777 == 0o600
    again = project.runner("crontab", "install", "--file", str(foreign))
    assert again.returncode == 0 and "already up to date" in again.stdout, again

    assert project.runner("crontab", "remove", "--file", str(foreign)).returncode == 0
    assert foreign.read_text() == before
    fresh = crond / "runner"
    assert project.runner("crontab", "install", "--file", str(fresh)).returncode == 0
    assert fresh.read_text().startswith("SHELL=/bin/sh\n# BEGIN runner ")
    assert project.runner("crontab", "remove", "--file", str(fresh)).returncode == 0
    assert not fresh.exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_quotes_odd_paths_and_lets_jobs_write_their_folders(tmp_path: Path):
    project = odd_project(tmp_path)
    inbox = project.root / "in box"
    inbox.mkdir(parents=True)
    project.configure(
        f"""
        [job:hello]
        schedule = cron * * * * *

        [job:ingest]
        uses = jobs.ingest_images:ingest_images
        watch = "{inbox}"
        inbox = {inbox}
        processed = ../done 50%
        """,
        job_packages="jobs",
    )
    done = project.runner("systemd-unit")
    assert done.returncode == 0, done
    assert "PrivateTmp=yes" in done.stdout and "/tmp, which PrivateTmp=yes hides" in done.stderr, done
    writable = next(x for x in done.stdout.splitlines() if x.startswith("ReadWritePaths="))
    assert f'"-{str(inbox).replace("%", "%%")}"' in writable, writable
    assert f'"-{str(project.root / "done 50%").replace("%", "%%")}"' in writable, writable
    unit = tmp_path / "runner-odd.service"
    unit.write_text(done.stdout)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.stderr == "", verify.stderr


def test_systemd_unit_refuses_an_unknown_run_as_user(sqlite_project: Project):
    configure_minutely(sqlite_project)
    for user in ("no-such-user-x", "root\nExecStartPre=/bin/touch /tmp/pwned"):
        assert_one_line_error(sqlite_project.runner("systemd-unit", "--run-as", user), "no such user")
