"""A hostile (or just careless) config: every case is one line on stderr, exit 2, no traceback,
and nothing created or changed on disk, in the commands that read it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error

BASE = "[runner]\nvar_dir = var\njob_packages = jobs_fixture\ndatabase = sqlite:///var/runner.db\n\n"
ECHO = "[job:echo]\nuses = jobs_fixture.echo:echo\n"


def job(*lines: str, name: str = "echo") -> str:
    return "\n".join([f"[job:{name}]", "uses = jobs_fixture.echo:echo", *lines]) + "\n"


def watch_job(*lines: str) -> str:
    return job("watch = .", *lines, name="w")


# (id, config text after BASE, or bytes for the whole file; what stderr must mention)
CASES: list[tuple[str, str | bytes, str]] = [
    # durations and intervals out of bounds
    ("every-500000w", job("schedule = every 500000w"), "at most 366d"),
    ("every-0.0001s", job("schedule = every 0.0001s"), "at least 1s"),
    ("every-0s", job("schedule = every 0s"), "at least 1s"),
    ("every-negative", job("schedule = every -5m"), "schedule"),
    ("every-nan", job("schedule = every nan"), "schedule"),
    ("every-inf", job("schedule = every inf"), "at most 366d"),
    ("heartbeat-huge", "[runner]\nheartbeat = 99999999999999w\n", "heartbeat"),
    ("stale_after-huge", "[runner]\nstale_after = 99999999999999w\n", "stale_after"),
    ("heartbeat-zero", "[runner]\nheartbeat = 0\n", "at least 100ms"),
    ("timeout-1e400", job("timeout = 1e400"), "timeout"),
    ("timeout-negative", job("timeout = -1s"), "timeout"),
    ("retry_backoff-10000d", job("retry_backoff = 10000d"), "retry_backoff"),
    ("jitter-400d", job("jitter = 400d"), "jitter"),
    ("catchup-huge", "[runner]\ncatchup = 9999999999999999999999s\n", "catchup"),
    ("kill_grace-nan", "[runner]\nkill_grace = nan\n", "kill_grace"),
    ("shutdown_grace-unit", "[runner]\nshutdown_grace = 1x\n", "shutdown_grace"),
    ("settle-500w", watch_job("settle = 500w"), "settle"),
    ("rescan-half-second", watch_job("rescan = 0.5s"), "at least 1s"),
    # whole numbers
    ("retries-huge", job("retries = 99999999999999999999"), "retries"),
    ("retries-float", job("retries = 1e3"), "retries"),
    ("max_workers-hex", "[runner]\nmax_workers = 0x10\n", "max_workers"),
    ("max_workers-huge", "[runner]\nmax_workers = 100000\n", "max_workers"),
    ("batch-zero", watch_job("batch = 0"), "batch"),
    ("batch-arabic-digits", watch_job("batch = ١٢"), "batch"),
    # schedules and zones
    ("overlap-injection", job("overlap = skip; DROP TABLE runs"), "overlap"),
    ("cron-minute-99", job("schedule = cron 99 * * * *"), "schedule"),
    ("at-year-99999", job("schedule = at 99999-01-01 00:00"), "schedule"),
    ("at-year-9999", job("schedule = at 9999-12-31 23:59", "jitter = 366d"), "year must be"),
    ("every-start-9999", job("schedule = every 366d start 9999-01-01 00:00"), "year must be"),
    ("at-year-1", job("schedule = at 0001-01-01 00:00", "timezone = America/New_York"), "year must be"),
    ("timezone-path", job("timezone = ../../etc/passwd"), "timezone"),
    ("timezone-nul", job("timezone = UTC\x00"), "timezone"),
    # names
    ("job-name-empty", "[job:]\nuses = jobs_fixture.echo:echo\n", "job names"),
    ("job-name-space", job(name="x y"), "job names"),
    ("job-name-300", job(name="j" * 300), "at most 200"),
    ("job-name-dash-first", job(name="-rf"), "job names"),
    ("job-name-shell", job(name="a;rm -rf ~"), "job names"),
    ("job-name-unicode", job(name="ünï"), "job names"),
    ("sections-differ-by-space", job(name="quick") + job(name=" quick"), "second section for job quick"),
    ("section-upper-case", "[JOB:x]\nuses = jobs_fixture.echo:echo\n", "unknown section"),
    ("duplicate-key", job("timeout = 1s", "timeout = 2s"), "not a valid INI file"),
    ("duplicate-section", "[runner]\nheartbeat = 1s\n", "not a valid INI file"),
    # paths and URLs that would carry a line of their own into cron or systemd
    (
        "log_dir-continuation",
        "[runner]\nlog_dir = ../var/log\n  * * * * * root touch /tmp/pwned #\n",
        "log_dir",
    ),
    ("var_dir-control-char", "[runner]\nvar_dir = va\x01r\n", "var_dir"),
    ("database-bell", "", "database"),  # filled in below: the [runner] database holds a control char
    ("database-port", "", "port"),
    ("watch-unterminated-quote", job('watch = "unterminated', name="w"), "watch"),
    ("watch-missing-folder", job("watch = no-such-folder", name="w"), "no-such-folder"),
    ("uses-not-a-target", job("uses = os.system; rm"), "uses"),
    # encodings
    ("latin-1", (BASE + "[job:caf\xe9]\n").encode("latin-1"), "cannot read"),
    ("utf-16", (BASE + ECHO).encode("utf-16"), "cannot read"),
    ("nul-bytes", (BASE + ECHO).encode() + b"\x00\x00", "not a valid INI file"),
    ("no-section-header", b"heartbeat = 1s\n", "not a valid INI file"),
]


def config_bytes(case_id: str, text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    base = BASE
    if case_id == "database-bell":
        base = base.replace("sqlite:///var/runner.db", "sqlite:///var/run\x07ner.db")
    if case_id == "database-port":
        base = base.replace("sqlite:///var/runner.db", "postgresql://u:pw@host:port/db")
    if text.startswith("[runner]\n") and case_id != "duplicate-section":
        # more [runner] keys: they go into the one [runner] section
        return (base.replace("\n\n", "\n" + text.removeprefix("[runner]\n") + "\n", 1)).encode()
    return (base + text).encode()


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("case_id", "text", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_hostile_config_is_one_line_exit_2_and_writes_nothing(
    sqlite_project: Project, case_id: str, text: str | bytes, fragment: str
):
    project = sqlite_project
    project.config_path.parent.mkdir(parents=True, exist_ok=True)
    project.config_path.write_bytes(config_bytes(case_id, text))
    before = snapshot(project.root)
    # `next` reads the config but does not look at watched folders
    commands = [("check",)] if case_id == "watch-missing-folder" else [("check",), ("next",)]
    for command in commands:
        done = project.runner(*command)
        assert_one_line_error(done, fragment)
    assert snapshot(project.root) == before


def test_at_least_forty_cases():
    assert len(CASES) >= 40


def test_a_byte_order_mark_is_accepted_and_check_creates_no_database(sqlite_project: Project):
    project = sqlite_project
    project.config_path.parent.mkdir(parents=True, exist_ok=True)
    project.config_path.write_bytes(b"\xef\xbb\xbf" + (BASE + ECHO).encode())
    done = project.runner("check")
    assert done.returncode == 0, done
    assert "not created yet" in done.stdout, done
    assert sorted(os.listdir(project.config_path.parent)) == ["runner.ini"]


@pytest.mark.parametrize(
    "args",
    [
        ("logs", "99999999999999999999"),
        ("logs", "-1"),
        ("history", "--limit", "1e20"),
        ("history", "--limit", "99999999999999999999"),
        ("next", "--count", "99999999999999999999"),
        ("run", "typed", "-p", "day=2026-01-01", "--ratio", "nan"),
        ("run", "typed", "-p", "day=2026-01-01", "-p", "ratio=inf"),
    ],
    ids=["logs-huge", "logs-negative", "limit-float", "limit-huge", "count-huge", "ratio-nan", "ratio-inf"],
)
def test_numeric_options_out_of_range_are_one_line(sqlite_project: Project, args: tuple[str, ...]):
    sqlite_project.configure(
        "[job:typed]\nuses = jobs_fixture.misc:typed\n[job:tick]\nschedule = every 1m\nuses = jobs_fixture.ticks:tick\nout = x"
    )
    done = sqlite_project.runner(*args)
    assert_one_line_error(done)
    assert sqlite_project.runner("history", "--json").json() == []


def test_a_job_name_too_long_for_the_history_is_refused_before_any_row(sqlite_project: Project):
    project = sqlite_project
    project.configure(job_packages="jobs_longname")
    done = project.runner("run", "j" * 300)
    assert_one_line_error(done, "at most 200 characters")
    listed = project.runner("list", "--json")
    assert [row["status"] for row in listed.json()] == ["broken"], listed
    assert not project.var_dir.exists()
