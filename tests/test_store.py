"""The run history on each backend: schema and migrations, unique fire keys, overlap leases,
reaping lost runs, and per-job state."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Project, wait_until

from runner.errors import AlreadyRan
from runner.models import SCHEMA_REVISION, RunStatus, metadata, runs, utcnow
from runner.store import MIGRATIONS_DIR, RunEnd, Store

JOB = "job_under_test"
LEASE_TTL_S = 60.0
STALE_AFTER_S = 30.0


def claim(store: Store, fire_key: str, *, job: str = JOB, lease: float | None = None, **values: Any) -> int:
    """Claim a fire (and, with `lease` seconds, the job's lease); returns the run id."""
    run_id, _holder = store.claim(job=job, fire_key=fire_key, trigger="manual", lease_ttl_s=lease, **values)
    return run_id


def forge_run(store: Store, run_id: int, **columns: Any) -> None:
    """Set columns of a run's row as a supervisor elsewhere (or long gone) would have left them."""
    with store.begin() as conn:
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(**columns))


def alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- schema ----------------------------------------------------------------------------------------


def test_schema_revision_is_alembic_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_REVISION


def test_schema_is_created_on_first_use(store: Store) -> None:
    assert store.schema_revision() is None

    run_id = claim(store, "first")

    assert store.schema_revision() == SCHEMA_REVISION
    assert store.get_run(run_id).job == JOB
    assert {"runs", "leases", "job_state"} <= set(sa.inspect(store.engine).get_table_names())


def test_migrations_build_the_schema_the_models_describe(store: Store) -> None:
    """Every table the migrations create is described by the engine's models, and only those:
    a shipped job's tables are the job's own (runner.jobtables)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    described = metadata
    store.upgrade()

    with store.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), described)
    assert differences == []


def test_database_at_an_older_revision_is_upgraded_on_first_use(database_url: str) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    oldest = list(script.walk_revisions())[-1].revision
    if oldest == SCHEMA_REVISION:
        pytest.skip("only one migration so far")
    old = Store(database_url)
    with old.engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, oldest)
    assert old.schema_revision() == oldest
    old.engine.dispose()

    fresh = Store(database_url)
    run_id = claim(fresh, "after-upgrade")

    assert fresh.schema_revision() == SCHEMA_REVISION
    assert fresh.get_run(run_id) is not None
    fresh.engine.dispose()


def test_db_upgrade_is_idempotent(project: Project) -> None:
    first = project.runner("db", "upgrade")
    second = project.runner("db", "upgrade")
    checked = project.runner("check", "--json")

    assert first.returncode == 0, first
    assert f"from empty to revision {SCHEMA_REVISION}" in first.stdout
    job_data = Store(project.data_url)  # made too: a job's first run does not migrate it
    assert job_data.schema_revision() == SCHEMA_REVISION
    job_data.engine.dispose()
    assert second.returncode == 0, second
    assert f"already at revision {SCHEMA_REVISION}" in second.stdout
    assert checked.json()["database"] == "ok"


# --- fires -----------------------------------------------------------------------------------------


def test_same_fire_cannot_be_claimed_twice(store: Store) -> None:
    first = claim(store, "cron:2026-12-01T09:00:00+00:00")

    with pytest.raises(AlreadyRan) as raised:
        claim(store, "cron:2026-12-01T09:00:00+00:00")

    assert raised.value.exit_code == 3
    assert f"run {first}" in str(raised.value)
    assert [r.id for r in store.history(JOB)] == [first]


def test_retries_and_other_jobs_may_reuse_a_fire_key(store: Store) -> None:
    first = claim(store, "fire-1")

    retry = claim(store, "fire-1", attempt=2, first_run_id=first)
    other_job = claim(store, "fire-1", job="another_job")

    assert store.get_run(retry).first_run_id == first
    assert store.get_run(other_job).job == "another_job"


def test_racing_claims_of_one_fire_start_exactly_one(database_url: str) -> None:
    """Eight schedulers (each with its own engine) claim the same fire at once."""
    Store(database_url).ensure_schema()
    stores = [Store(database_url) for _ in range(8)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def race(store: Store) -> None:
        barrier.wait()
        try:
            claim(store, "cron:2026-12-01T09:00:00+00:00")
            outcomes.append("claimed")
        except AlreadyRan:
            outcomes.append("already ran")

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.engine.dispose()

    assert sorted(outcomes) == ["already ran"] * 7 + ["claimed"]


# --- leases ----------------------------------------------------------------------------------------


def test_lease_is_held_until_released(store: Store) -> None:
    holder = claim(store, "a", lease=LEASE_TTL_S)

    waiter, held_by = store.claim(job=JOB, fire_key="b", trigger="manual", lease_ttl_s=LEASE_TTL_S)

    assert held_by is not None and held_by.id == holder
    assert store.get_run(waiter).status == RunStatus.QUEUED
    assert store.leases.acquire(JOB, waiter, LEASE_TTL_S).id == holder

    store.leases.release(JOB, holder)

    assert store.leases.acquire(JOB, waiter, LEASE_TTL_S) is None
    assert store.get_run(waiter).status == RunStatus.RUNNING
    assert claim_holder(store, "c") == waiter


def claim_holder(store: Store, fire_key: str) -> int | None:
    """Who holds the job's lease, seen by a new claim (None: the new claim took it)."""
    _run_id, held_by = store.claim(job=JOB, fire_key=fire_key, trigger="manual", lease_ttl_s=LEASE_TTL_S)
    return held_by.id if held_by else None


def test_expired_lease_is_taken_over(store: Store) -> None:
    claim(store, "a", lease=-1.0)  # a lease that has already expired: its holder stopped renewing

    assert claim_holder(store, "b") is None


def test_heartbeat_renews_the_lease(store: Store) -> None:
    holder = claim(store, "a", lease=-1.0)

    store.heartbeat(holder, JOB, LEASE_TTL_S)

    assert claim_holder(store, "b") == holder


def test_lease_of_a_finished_run_is_taken_over(store: Store) -> None:
    holder = claim(store, "a", lease=LEASE_TTL_S)
    store.finish(holder, RunEnd(status=RunStatus.SUCCEEDED, ended_at=utcnow()))

    assert claim_holder(store, "b") is None


def test_racing_leases_have_one_winner(database_url: str) -> None:
    """Eight fires of one job (overlap = skip) start at once: exactly one takes the lease."""
    Store(database_url).ensure_schema()
    stores = [Store(database_url) for _ in range(8)]
    holders: list[int | None] = []
    barrier = threading.Barrier(len(stores))

    def race(number: int, store: Store) -> None:
        barrier.wait()
        _run_id, held_by = store.claim(job=JOB, fire_key=f"fire-{number}", trigger="manual", lease_ttl_s=60)
        holders.append(held_by.id if held_by else None)

    threads = [threading.Thread(target=race, args=pair) for pair in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.engine.dispose()

    assert len(holders) == 8
    assert holders.count(None) == 1
    assert len(set(holders) - {None}) == 1, "every loser must name the same winner"


# --- lost runs -------------------------------------------------------------------------------------


def test_stale_heartbeat_is_reaped_as_lost_and_frees_the_lease(store: Store) -> None:
    """A supervisor whose pid cannot be checked from here (another boot or PID namespace)."""
    run_id = claim(store, "a", lease=LEASE_TTL_S)
    forge_run(store, run_id, heartbeat_at=utcnow() - timedelta(hours=1), pidns="another-boot/4026531836")

    reaped = store.reap_lost(STALE_AFTER_S)

    assert reaped == [run_id]
    record = store.get_run(run_id)
    assert record.status == RunStatus.LOST
    assert "stopped reporting" in record.error
    assert record.ended_at is not None
    assert claim_holder(store, "b") is None


def test_a_live_supervisor_here_is_not_lost_however_old_its_heartbeat(store: Store) -> None:
    """Its pid says it lives (it may be stuck behind a busy database): only a dead pid decides."""
    run_id = claim(store, "a", lease=LEASE_TTL_S)
    forge_run(store, run_id, heartbeat_at=utcnow() - timedelta(hours=1))

    assert store.reap_lost(STALE_AFTER_S) == []
    assert store.get_run(run_id).status == RunStatus.RUNNING
    assert claim_holder(store, "b") is not None


def test_dead_supervisor_on_this_host_is_lost_at_once(store: Store) -> None:
    run_id = claim(store, "a")
    forge_run(store, run_id, pid=dead_pid())

    assert store.reap_lost(STALE_AFTER_S) == [run_id]
    assert "is gone" in store.get_run(run_id).error


def test_live_runs_and_other_hosts_fresh_runs_are_not_reaped(store: Store) -> None:
    alive_here = claim(store, "a")
    other_host = claim(store, "b")
    forge_run(store, other_host, host="some-other-host", pid=dead_pid())

    assert store.reap_lost(STALE_AFTER_S) == []
    assert store.get_run(alive_here).status == RunStatus.RUNNING
    assert store.get_run(other_host).status == RunStatus.RUNNING


def test_finished_runs_are_never_reaped(store: Store) -> None:
    run_id = claim(store, "a")
    forge_run(store, run_id, status=RunStatus.SUCCEEDED.value, heartbeat_at=utcnow() - timedelta(hours=1))

    assert store.reap_lost(STALE_AFTER_S) == []
    assert store.get_run(run_id).status == RunStatus.SUCCEEDED


# --- state -----------------------------------------------------------------------------------------


def test_state_round_trips_json_values(store: Store) -> None:
    value = {"cursor": "2026-12-01T09:00:00Z", "ids": [1, 2, 3], "done": True}

    store.state.set(JOB, "watermark", value)
    store.state.set(JOB, "count", 1)
    store.state.set(JOB, "count", 2)
    store.state.set("another_job", "count", 99)

    assert store.state.get(JOB, "watermark") == value
    assert store.state.items(JOB) == {"watermark": value, "count": 2}
    store.state.delete(JOB, "count")
    assert store.state.get(JOB, "count", "missing") == "missing"


def test_state_write_in_a_rolled_back_transaction_is_not_kept(store: Store) -> None:
    store.state.set(JOB, "cursor", 1)

    with pytest.raises(RuntimeError), store.begin() as conn:
        store.state.set(JOB, "cursor", 2, conn)
        raise RuntimeError("the rows it covers failed to write")

    assert store.state.get(JOB, "cursor") == 1


def test_concurrent_first_writes_of_one_state_key(database_url: str, backend: str) -> None:
    """Two runs (overlap = allow) set the same new key at once: both writes must succeed."""
    first, second = Store(database_url), Store(database_url)
    first.ensure_schema()
    second.ensure_schema()
    errors: list[BaseException] = []

    def write_second() -> None:
        try:
            second.state.set(JOB, "count", 2)
        except BaseException as exc:
            errors.append(exc)

    with first.begin() as conn:
        first.state.set(JOB, "count", 1, conn)
        writer = threading.Thread(target=write_second)
        writer.start()
        if backend == "postgresql":
            wait_until(lambda: waiting_on_a_lock(first), "the second write to wait for the first")
        else:
            writer.join(timeout=0.5)  # SQLite: it waits in BEGIN IMMEDIATE for our transaction
    writer.join(timeout=60)
    value = first.state.get(JOB, "count")
    first.engine.dispose()
    second.engine.dispose()

    assert errors == []
    assert value == 2


def waiting_on_a_lock(store: Store) -> bool:
    with store.engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar())


def test_upgrade_to_0006_links_existing_first_attempts_to_themselves(database_url: str) -> None:
    """Runs recorded before revision 0006 had no first_run_id; the upgrade sets it to their id."""
    from alembic import command

    old = Store(database_url)
    with old.engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        now = utcnow().replace(tzinfo=None)
        conn.execute(
            sa.text(
                "INSERT INTO runs (job, fire_key, trigger, attempt, status, late, queued_at, host, pid) "
                "VALUES ('old', 'k', 'manual', 1, 'succeeded', false, :now, 'h', 1)"
            ),
            {"now": now},
        )
    old.engine.dispose()

    fresh = Store(database_url)
    fresh.ensure_schema()
    [record] = fresh.history("old")
    assert record.first_run_id == record.id
    assert record.reason is None and record.late_s is None
    fresh.engine.dispose()
