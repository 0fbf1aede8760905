"""Retention: `runner prune` (and the daemon's prune thread) keep exactly what keep_runs and
keep_logs say, per job, by count and by age; never an active run, a held lease or file claim, a
retry a stop cut short, or the newest run of a job; a fire's attempts go together. Logs live in
day folders, and those of older versions (LOG_DIR/JOB/RUN_ID.log) are found and pruned too."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Project, assert_one_line_error, stop, wait_until

from runner.models import file_claims, leases, runs
from runner.store import Store

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def seed(
    project: Project, job: str, ages: list[timedelta], names_itself: bool = True, **values: object
) -> list[int]:
    """One finished run of `job` per age (oldest first, so ids grow with time); returns their ids.
    A first attempt names itself in first_run_id as rows written before 2026-12-03 do, or with
    `names_itself=False` leaves it NULL as claims write it since."""
    assert project.runner("db", "upgrade").returncode == 0
    engine = sa.create_engine(project.database_url)
    ids = []
    try:
        with engine.begin() as conn:
            for age in ages:
                at = NOW - age
                row = dict(
                    job=job,
                    fire_key=f"seed:{uuid.uuid4().hex}",
                    trigger="manual",
                    attempt=1,
                    status="succeeded",
                    late=False,
                    queued_at=at,
                    started_at=at,
                    ended_at=at,
                    host="seed",
                    pid=1,
                )
                row.update(values)
                run_id = conn.execute(sa.insert(runs).returning(runs.c.id), row).scalar_one()
                if row["attempt"] == 1 and names_itself:
                    conn.execute(sa.update(runs).where(runs.c.id == run_id).values(first_run_id=run_id))
                ids.append(run_id)
    finally:
        engine.dispose()
    return ids


def execute(project: Project, statement: sa.Executable) -> None:
    engine = sa.create_engine(project.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(statement)
    finally:
        engine.dispose()


def run_ids(project: Project, job: str | None = None) -> list[int]:
    engine = sa.create_engine(project.database_url)
    try:
        with engine.connect() as conn:
            query = sa.select(runs.c.id).order_by(runs.c.id)
            if job:
                query = query.where(runs.c.job == job)
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def prune(project: Project, *args: str) -> dict:
    done = project.runner("prune", "--json", *args)
    assert done.returncode == 0, done
    return done.json()


def days(*numbers: float) -> list[timedelta]:
    return [DAY * n for n in numbers]


# --- what is kept --------------------------------------------------------------------------------


def test_count_per_job_from_the_job_and_from_runner(project: Project) -> None:
    project.configure("[job:few]\nuses = jobs_fixture.echo:echo\nkeep_runs = 3\n[job:echo]", keep_runs="5")
    few = seed(project, "few", days(*range(10, 0, -1)))
    echo = seed(project, "echo", days(*range(10, 0, -1)))
    gone = seed(project, "gone", days(*range(10, 0, -1)))  # no longer configured: [runner]'s

    report = prune(project)

    assert run_ids(project, "few") == few[-3:]
    assert run_ids(project, "echo") == echo[-5:]
    assert run_ids(project, "gone") == gone[-5:]
    assert report["runs"] == 7 + 5 + 5
    assert {j["job"]: j["runs"] for j in report["jobs"]} == {"few": 7, "echo": 5, "gone": 5}


def test_age_and_both_limits(project: Project) -> None:
    project.configure(
        "[job:aged]\nuses = jobs_fixture.echo:echo\nkeep_runs = 30d\n[job:both]\nuses = jobs_fixture.echo:echo\nkeep_runs = 30d, 2"
    )
    aged = seed(project, "aged", days(100, 60, 31, 29, 10, 1))
    both = seed(project, "both", days(100, 60, 31, 29, 10, 1))

    prune(project)

    assert run_ids(project, "aged") == aged[3:]  # younger than 30 days
    assert run_ids(project, "both") == both[4:]  # younger than 30 days and among the newest 2


def test_dry_run_counts_the_same_and_removes_nothing(project: Project) -> None:
    project.configure("[job:echo]\nkeep_runs = 2")
    ids = seed(project, "echo", days(5, 4, 3, 2, 1))

    dry = prune(project, "--dry-run")
    assert run_ids(project) == ids
    real = prune(project)

    assert dry["dry_run"] is True and dry["runs"] == 3
    assert real["runs"] == 3
    assert run_ids(project) == ids[-2:]
    table = project.runner("prune", "--dry-run")
    assert table.returncode == 0 and "nothing to prune" in table.stdout, table


def test_never_an_active_run_a_lease_a_claim_a_stopped_retry_or_the_newest(project: Project) -> None:
    project.configure("[job:echo]\nkeep_runs = 1h")
    old = days(400)
    running = seed(project, "echo", old, status="running", ended_at=None)[0]
    queued = seed(project, "echo", old, status="queued", ended_at=None)[0]
    stopped_retry = seed(project, "echo", old, status="killed", reason="retry stopped")[0]
    leased = seed(project, "echo", old)[0]
    claimed = seed(project, "echo", old, fire_key="file:claimed")[0]
    plain = seed(project, "echo", days(400, 399))
    newest = seed(project, "echo", days(398))[0]  # also old, but the newest of its job
    execute(
        project, sa.insert(leases).values(job="echo", run_id=leased, host="h", pid=1, expires_at=NOW + DAY)
    )
    execute(
        project,
        sa.insert(file_claims).values(
            job="echo",
            path="/in/a",
            size=1,
            mtime_ns=1,
            fire_key="file:claimed",
            state="claimed",
            host="h",
            pid=1,
            attempts=1,
            claimed_at=NOW,
        ),
    )

    report = prune(project)

    assert report["runs"] == 2
    assert run_ids(project) == [running, queued, stopped_retry, leased, claimed, newest]
    assert not set(plain) & set(run_ids(project))


def test_a_fires_attempts_go_together(project: Project) -> None:
    """A retry names its first attempt (first_run_id, a foreign key on PostgreSQL): an old first
    attempt stays while a retry of it is kept, and goes with its retries when they all may."""
    project.configure("[job:echo]\nkeep_runs = 1h")
    done_first, live_first = seed(project, "echo", days(300, 300))
    done_retry = seed(project, "echo", days(299), attempt=2, first_run_id=done_first, fire_key="f1")[0]
    live_retry = seed(project, "echo", days(299), attempt=2, status="queued", fire_key="f2")[0]
    execute(project, sa.update(runs).where(runs.c.id == live_retry).values(first_run_id=live_first))
    execute(project, sa.update(runs).where(runs.c.id == done_retry).values(first_run_id=done_first))
    newest = seed(project, "echo", days(1))[0]

    prune(project)

    assert run_ids(project) == [live_first, live_retry, newest]


@pytest.mark.parametrize("names_itself", [False, True], ids=["first-null", "first-names-itself"])
def test_the_delete_keeps_every_attempt_of_a_fire_with_an_active_one(
    project: Project, names_itself: bool
) -> None:
    """The delete checks again in its own transaction that no attempt of a run's fire is active
    (one may have become active since the candidates were read): a first attempt whose retry
    runs, and a retry whose first attempt runs, stay; whether the first attempt's first_run_id
    is NULL (claims since 2026-12-03) or its own id (rows before)."""
    first, active_first, done = seed(project, "echo", days(300, 300, 300), names_itself=names_itself)
    active_retry = seed(
        project, "echo", days(299), attempt=2, status="running", fire_key="f1", first_run_id=first
    )
    done_retry = seed(project, "echo", days(299), attempt=2, fire_key="f2", first_run_id=active_first)
    execute(project, sa.update(runs).where(runs.c.id == active_first).values(status="running"))
    store = Store(project.database_url)
    try:
        removed = store.pruning.delete([first, done_retry[0], done])
    finally:
        store.engine.dispose()

    assert removed == 1
    assert run_ids(project) == [first, active_first, active_retry[0], done_retry[0]]


# --- logs ----------------------------------------------------------------------------------------


def started_at(project: Project) -> list[tuple[int, datetime]]:
    engine = sa.create_engine(project.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(runs.c.id, runs.c.started_at).order_by(runs.c.id)))
    finally:
        engine.dispose()


def log_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.log"))


def test_logs_by_count_old_layout_included_and_runner_logs_finds_them(sqlite_project: Project) -> None:
    project = sqlite_project
    project.configure("[job:echo]\nkeep_logs = 2\nkeep_runs = forever")
    for _ in range(4):
        assert project.runner("run", "echo").returncode == 0
    logs = project.var_dir / "log" / "echo"
    # Each in the folder of the day (UTC) its run started: read from the rows, as the four runs
    # may fall on two sides of midnight.
    day = {run_id: started.strftime("%Y-%m-%d") for run_id, started in started_at(project)}
    assert log_files(logs) == [f"{day[n]}/{n}.log" for n in (1, 2, 3, 4)]
    # Runs 1 and 2 as an older version left them: the file in the job's folder; run 2's row does
    # not name it (a run stopped before it ended).
    for run_id in (1, 2):
        (logs / day[run_id] / f"{run_id}.log").rename(logs / f"{run_id}.log")
    execute(project, sa.update(runs).where(runs.c.id == 1).values(log_path=str(logs / "1.log")))
    execute(project, sa.update(runs).where(runs.c.id == 2).values(log_path=None))

    for run_id in (1, 2):
        shown = project.runner("logs", str(run_id))
        assert shown.returncode == 0 and f"run {run_id} of job echo started" in shown.stdout, shown

    report = prune(project)

    assert log_files(logs) == [f"{day[3]}/3.log", f"{day[4]}/4.log"]
    assert report["logs"] == 2 and report["runs"] == 0
    gone = project.runner("logs", "1")
    assert_one_line_error(gone, "log of run 1 is gone")


def test_logs_by_age_and_emptied_day_folders_go(sqlite_project: Project) -> None:
    project = sqlite_project
    project.configure("[job:echo]\nkeep_logs = 30d\nkeep_runs = forever")
    logs = project.var_dir / "log" / "echo"
    made = {}
    for age_days, run_id in ((100, 1), (40, 2), (31, 3), (20, 4), (0, 5)):
        moment = NOW - DAY * age_days
        path = logs / moment.strftime("%Y-%m-%d") / f"{run_id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("output\n")
        os.utime(path, (moment.timestamp(), moment.timestamp()))
        made[run_id] = path
    old_layout = logs / "9.log"  # the newest id, but written 50 days ago (an older version's file)
    old_layout.write_text("old\n")
    os.utime(old_layout, (time.time() - 50 * 86400,) * 2)
    other = logs / "notes.txt"  # not a run log: never touched
    other.write_text("mine\n")

    report = prune(project)

    assert sorted(p.name for p in logs.rglob("*.log")) == ["4.log", "5.log"]
    assert other.exists()
    assert not made[1].parent.exists() and not made[2].parent.exists()
    assert report["logs"] == 4 and report["folders"] == 3


def test_the_crontab_block_prunes_daily(sqlite_project: Project) -> None:
    project = sqlite_project
    project.configure("[job:echo]\nschedule = cron 0 7 * * *")

    shown = project.runner("crontab", "show", "--json")

    assert shown.returncode == 0, shown
    tail = f" prune >>{project.var_dir}/log/cron/prune.log 2>&1"
    daily = [line for line in shown.json()["lines"] if line.endswith(tail)]
    assert len(daily) == 1, shown.json()["lines"]
    assert daily[0].startswith("17 4 * * * ")


# --- the daemon ------------------------------------------------------------------------------------


def test_the_daemon_prunes_every_prune_every(project: Project) -> None:
    project.configure("[job:echo]\nkeep_runs = 3\nkeep_logs = 3", prune_every="1s")
    ids = seed(project, "echo", days(*range(20, 0, -1)))

    daemon = project.start("daemon")
    wait_until(lambda: run_ids(project, "echo") == ids[-3:], "the daemon to prune to 3 runs")
    seed(project, "echo", days(0.5, 0.4))
    wait_until(lambda: run_ids(project, "echo")[:1] == [ids[-1]], "the daemon to prune again")
    stderr = stop(project, daemon)

    assert len(run_ids(project, "echo")) == 3
    assert "pruned 17 runs" in stderr, stderr


# --- settings and space ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("ten", "expected an age like 90d, a count like 50000"),
        ("10m", "an age is at least 1h"),
        ("0", "a count is 1 to"),
        ("90d, 30d", "one age at most"),
        ("400d", "at most 366d"),
    ],
)
def test_bad_keep_values_are_one_line_exit_2(sqlite_project: Project, value: str, fragment: str) -> None:
    sqlite_project.configure(f"[job:echo]\nkeep_logs = {value}")

    done = sqlite_project.runner("prune")

    assert_one_line_error(done, f"[job:echo] keep_logs = '{value}'", fragment)


def test_sqlite_space_goes_back_to_the_disk_and_db_vacuum_converts_an_old_file(
    sqlite_project: Project,
) -> None:
    project = sqlite_project
    project.configure("[job:echo]\nkeep_runs = 1")
    seed(project, "echo", [DAY * 10] * 20000, error="x" * 200)
    database = Path(project.database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # new files: incremental
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = database.stat().st_size

    report = prune(project)

    assert report["runs"] == 19999 and report["released_bytes"] > 0
    assert database.stat().st_size < before / 2
    with sqlite3.connect(database) as db:  # an older version's file: no auto-vacuum
        db.execute("PRAGMA auto_vacuum = NONE")
        db.execute("VACUUM")
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    vacuum = project.runner("db", "vacuum")
    assert vacuum.returncode == 0 and "database rewritten" in vacuum.stdout, vacuum
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


def test_weekly_report_of_a_kept_week_is_the_same_after_a_prune(project: Project) -> None:
    """The report aggregates the history by period: pruning what is older than keep_runs leaves
    the figures of a kept week (and the week before it, which the report compares with) as they were."""
    reports = project.root / "reports"
    project.configure(
        f"[job:weekly_report]\nreports = {reports}\nquarantine = {project.root / 'quarantine'}\n"
        "keep_runs = forever\n[job:alpha]\nuses = jobs.hello:hello\nkeep_runs = 30d",
        job_packages="jobs",
        timezone="UTC",
    )
    seed(project, "alpha", days(200, 150, 100, 60, 20, 15, 13, 11, 9, 8, 7.5, 6, 5, 4, 3, 2), error="x")
    year, number, _ = (NOW - 7 * DAY).isocalendar()
    week = f"{year}-W{number:02d}"

    def report() -> str:
        done = project.runner("run", "weekly_report", "-p", f"week={week}")
        assert done.returncode == 0, done
        return (reports / week / "jobs.csv").read_text()

    before = report()
    pruned = prune(project)
    after = report()

    assert pruned["runs"] == 4  # the four runs older than 30 days
    assert "alpha" in before
    assert after == before
