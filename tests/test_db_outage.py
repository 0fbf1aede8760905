"""The database going away: a PostgreSQL restart under two running daemons, a `runner run` whose
database is down or stops answering. Each test runs its own throwaway cluster (tests/pgcluster.py)."""

from __future__ import annotations

import collections
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from conftest import Project, assert_one_line_error, stop, wait_until
from pgcluster import PgCluster, free_port

OUTAGE_S = 4.0  # how long the server stays down in each outage
RESUME_WITHIN_S = 10.0  # firing must resume this soon after the server is back


def configure(project: Project, **runner: str) -> None:
    project.configure(
        f"""
        [job:tick]
        uses = jobs_fixture.ticks:tick
        schedule = every 1s
        out = {project.root / "ticks.txt"}

        [job:slow]
        uses = jobs_fixture.ticks:tick
        schedule = every 1s
        out = {project.root / "slow.txt"}
        seconds = 3
        """,
        timezone="UTC",
        max_workers="2",
        shutdown_grace="15s",
        heartbeat="1s",
        **runner,
    )


def served(path: Path) -> list[str]:
    """The fire keys the job's runs wrote, one per run that started."""
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def stderr_so_far(daemon: subprocess.Popen[str]) -> str:
    """What a daemon started with `project.start` wrote to stderr so far. Read through a new open
    file description: seeking the test's own handle would move the daemon's write offset too."""
    with open(f"/proc/self/fd/{daemon.output[1].fileno()}", encoding="utf-8") as handle:  # type: ignore[attr-defined]
        return handle.read()


def rows(project: Project, job: str) -> list[dict]:
    return [r for r in project.history(job) if r["trigger"] == "schedule"]


def summary(rows: list[dict]) -> list[tuple]:
    return [(r["fire_key"], r["status"], r["late"], r["reason"], r["pid"]) for r in rows]


def utc(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def test_two_daemons_survive_database_restarts(cluster: PgCluster, tmp_path: Path):
    project = Project(tmp_path / "project", cluster.url)
    configure(project)
    ticks, slow = project.root / "ticks.txt", project.root / "slow.txt"
    first, second = project.start("daemon"), project.start("daemon")
    try:
        wait_until(lambda: len(project.runner("status", "--json").json()["daemons"]) == 2, "both daemons")
        outages = []
        for mode in ("fast", "immediate"):
            wait_until(lambda: len(served(slow)) and len(served(ticks)) >= 3, "fires before the outage")
            # stop while a `slow` run is 1 s into its 3 s: it ends while the server is down
            count = len(served(slow))
            wait_until(lambda count=count: len(served(slow)) > count, "a slow run to start", timeout_s=10)
            time.sleep(1)
            down_at = datetime.now(UTC)
            cluster.stop(mode)
            time.sleep(OUTAGE_S)
            assert first.poll() is None and second.poll() is None, "a daemon died with the database"
            cluster.start()
            back_at = datetime.now(UTC)
            outages.append((down_at, back_at))
            before = len(served(ticks))
            wait_until(
                lambda before=before: len(served(ticks)) > before,
                f"a fire within {RESUME_WITHIN_S:g}s of the server's return ({mode})",
                timeout_s=RESUME_WITHIN_S,
            )
            seen_back = len(outages)
            for daemon in (first, second):
                wait_until(
                    lambda daemon=daemon, n=seen_back: stderr_so_far(daemon).count("reachable again") == n,
                    f"each daemon to see the server back ({mode})",
                    timeout_s=RESUME_WITHIN_S,
                )
        time.sleep(4)  # the last slow run ends
    finally:
        logs = [stop(project, first), stop(project, second)]

    # each fire ran at most once, whoever took it (the job's own side effects)
    for path in (ticks, slow):
        repeated = [key for key, n in collections.Counter(served(path)).items() if n > 1]
        assert repeated == [], f"{path.name}: fires run twice: {repeated}"
    tick_rows, slow_rows = rows(project, "tick"), rows(project, "slow")
    assert set(served(ticks)) == {r["fire_key"] for r in tick_rows if r["status"] == "succeeded"}
    # nothing stuck, nothing lost: every run that started was recorded as it ended
    statuses = collections.Counter(r["status"] for r in tick_rows + slow_rows)
    assert set(statuses) <= {"succeeded", "skipped"}, statuses
    for down_at, back_at in outages:
        across = [
            r
            for r in slow_rows
            if r["status"] != "skipped" and utc(r["started_at"]) < down_at < utc(r["ended_at"])
        ]
        assert len(across) == 1, (down_at, slow_rows)
        assert across[0]["status"] == "succeeded", across[0]
        # Every fire due while the server was down has a row: the catch-up rule coalesced all but
        # the newest, which ran late (unless the previous run's end was still being recorded:
        # then it was skipped for the overlap, or a newer fire took its place in the queue).
        due = [
            f"{datetime.fromtimestamp(second, UTC):%Y-%m-%dT%H:%M:%SZ}"
            for second in range(int(down_at.timestamp()) + 1, int(back_at.timestamp()) + 1)
        ]
        recorded = {r["fire_key"]: r for r in tick_rows}
        assert [key for key in due if key not in recorded] == [], summary(tick_rows)
        assert any(
            recorded[key]["reason"] == "coalesced"
            and "while the database was unreachable" in recorded[key]["error"]
            for key in due
        ), summary(tick_rows)
    # each daemon said so once per outage, and once that it was back
    for log in logs:
        assert log.count("database unreachable") == len(outages), log
        assert log.count("database reachable again") == len(outages), log
        assert "Traceback" not in log, log


def test_a_run_that_ends_while_the_database_is_down_is_recorded_when_it_is_back(
    cluster: PgCluster, tmp_path: Path
):
    project = Project(tmp_path / "project", cluster.url)
    configure(project, lock_timeout="2s")
    assert project.runner("check").returncode == 0
    run = subprocess.Popen(
        project.argv(("run", "slow", "-p", "seconds=2")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=project.env(),
        cwd=project.root,
    )
    wait_until(lambda: served(project.root / "slow.txt"), "the job to start")
    cluster.stop("fast")
    try:
        _out, err = run.communicate(timeout=60)
    finally:
        cluster.start()
    assert run.returncode == 5, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("runner: run ") and "ended succeeded, but the database did not take it" in last, (
        err
    )
    assert "recorded by the next runner command" in last, err
    assert "Traceback" not in err, err
    # the next command writes the kept outcome: the run shows how it really ended
    (row,) = project.history("slow")
    assert row["status"] == "succeeded", row
    assert not list((project.var_dir / "unrecorded").glob("*.json"))


def test_runner_run_exits_5_when_the_database_refuses_connections(tmp_path: Path):
    port = free_port()  # nobody listens there
    project = Project(tmp_path / "project", f"postgresql://postgres@127.0.0.1:{port}/runner")
    project.configure()
    done = project.runner("run", "echo")
    assert_one_line_error(done, "cannot use database", "Connection refused", exit_code=5)


def test_runner_run_exits_5_in_bounded_time_when_the_database_never_answers(tmp_path: Path):
    with socket.socket() as silent:  # takes TCP connections (the kernel's backlog) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        project = Project(tmp_path / "project", f"postgresql://postgres@127.0.0.1:{port}/runner")
        project.configure()
        started = time.monotonic()
        done = project.runner("run", "echo")
        took_s = time.monotonic() - started
    assert_one_line_error(done, "cannot use database", "timeout", exit_code=5)
    assert took_s < 60, f"runner run waited {took_s:.0f}s for a server that never answers"
