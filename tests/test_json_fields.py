"""`runner status --json` and `runner history --json` are a stable interface (README: "JSON for
scripts"): these tests pin every field name, so adding, renaming or dropping one is a deliberate
change of the README's field list and of this file, never a side effect."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import Project, wait_until

RUN_FIELDS = {
    "id", "job", "fire_key", "trigger", "attempt", "first_run_id", "status", "late", "scheduled_at",
    "queued_at", "started_at", "ended_at", "heartbeat_at", "exit_code", "signal", "error", "host", "pid",
    "log_path", "params", "paths", "result", "pidns", "job_pid", "cgroup", "reason", "late_s", "duration_s",
}  # fmt: skip
STATUS_FIELDS = {"daemons", "jobs", "running", "next", "missed", "watching", "problems", "undelivered"}
DAEMON_FIELDS = {
    "id", "host", "pid", "config_path", "started_at", "heartbeat_at", "stopped_at", "queues", "notes",
    "heartbeat_age_s", "code_version", "code_loaded_at", "broken", "host_time", "clock_offset_s", "fired",
}  # fmt: skip
QUEUE_FIELDS = {"job", "queued", "oldest_queued_age_s", "skipped_last_hour"}
NEXT_FIELDS = {"job", "next_fire"}
MISSED_FIELDS = {"job", "latest", "count"}
WATCHING_FIELDS = {"job", "folders", "files"}


def configure(project: Project) -> tuple[Path, Path]:
    started, release = project.root / "started.txt", project.root / "release"
    inbox = project.root / "inbox"
    inbox.mkdir()
    project.configure(
        f"""
        [job:gate]
        started = {started}
        release = {release}

        [job:hourly]
        uses = jobs_fixture.echo:echo
        schedule = cron 0 * * * *

        [job:fail]

        [job:files]
        uses = jobs_fixture.filerec:filerec
        watch = {inbox}
        out = {project.root / "seen.txt"}
        """,
        timezone="UTC",
    )
    return started, release


def test_history_json_fields(sqlite_project: Project):
    project = sqlite_project
    configure(project)
    assert project.runner("run", "fail").returncode == 1
    assert project.runner("run", "hourly").returncode == 0
    rows = project.runner("history", "--json").json()
    assert len(rows) == 2
    for row in rows:
        assert set(row) == RUN_FIELDS, sorted(set(row) ^ RUN_FIELDS)
    failed = next(r for r in rows if r["job"] == "fail")
    assert isinstance(failed["id"], int) and failed["status"] == "failed" and failed["exit_code"] == 1
    assert isinstance(failed["duration_s"], float) and failed["late"] is False
    assert datetime.fromisoformat(failed["queued_at"]).tzinfo is not None  # ISO 8601 with its offset


def test_status_json_fields(sqlite_project: Project):
    from runner.store import Store

    project = sqlite_project
    started, release = configure(project)
    # Missed fires: the config has been in place for two hours and nothing ran hourly's fires.
    two_hours_ago = time.time() - 7200
    os.utime(project.config_path, (two_hours_ago, two_hours_ago))
    assert project.runner("run", "fail").returncode == 1  # a problem
    gate = project.start("run", "gate")  # a run in progress
    wait_until(started.exists, "the gate run to start")
    before_daemon = project.runner("status", "--json").json()
    assert set(before_daemon) == STATUS_FIELDS
    [missed] = before_daemon["missed"]
    assert set(missed) == MISSED_FIELDS and missed["job"] == "hourly" and missed["count"] >= 1

    store = Store(project.database_url)  # a live daemon's row, with a fire waiting in it
    daemon_id = store.daemons.register(str(project.config_path))
    oldest = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    store.daemons.heartbeat(daemon_id, queues={"hourly": {"queued": 1, "oldest": oldest}}, notes=[])
    store.engine.dispose()
    status = project.runner("status", "--json").json()
    release.touch()
    assert project.finish(gate).returncode == 0

    assert set(status) == STATUS_FIELDS
    [daemon] = status["daemons"]
    assert set(daemon) == DAEMON_FIELDS, sorted(set(daemon) ^ DAEMON_FIELDS)
    [queue] = status["jobs"]
    assert set(queue) == QUEUE_FIELDS and queue["queued"] == 1
    [running] = status["running"]
    assert set(running) == RUN_FIELDS and running["job"] == "gate"
    assert {n["job"] for n in status["next"]} == {"hourly"}
    assert all(set(n) == NEXT_FIELDS for n in status["next"])
    [watching] = status["watching"]
    assert set(watching) == WATCHING_FIELDS and watching["job"] == "files"
    assert status["problems"] and all(set(p) == RUN_FIELDS for p in status["problems"])
