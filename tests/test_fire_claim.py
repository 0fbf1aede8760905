"""A fire claimed without a lease is one autocommit statement (runner/store/fireclaim.py): the same
row as a claim in a transaction, one winner per fire among processes, a loser told who has it,
SQLite's write lock held only while SQLite runs the statement, and a connection the server dropped
replaced rather than reported as a failed claim."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tcpproxy import Proxy

from runner.errors import AlreadyRan, DatabaseBusy, StorageError
from runner.models import RunStatus, naive_utc, runs, utcnow
from runner.store import Store
from runner.store.engine import PING_IDLE_S

JOB = "claimed"
# What the claim writes; what it does not (id, times, pid) differs between any two claims.
COMPARED = ("trigger", "attempt", "status", "late", "scheduled_at", "host", "pidns", "params", "paths")


def row_of(store: Store, run_id: int) -> dict[str, Any]:
    with store.read() as conn:
        return dict(conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one())


def test_one_statement_claim_writes_the_row_a_transaction_writes(store: Store) -> None:
    values = dict(
        trigger="cron", params={"day": "monday"}, paths=["/in/a.png"], scheduled_at=utcnow(), late=True
    )
    alone, _ = store.claim(job=JOB, fire_key="alone", **values)
    leased, _ = store.claim(job=f"{JOB}-leased", fire_key="leased", lease_ttl_s=60.0, **values)

    one, other = row_of(store, alone), row_of(store, leased)

    assert {k: one[k] for k in COMPARED} == {k: other[k] for k in COMPARED}
    # A first attempt is its own first run: NULL in the row (no foreign key for PostgreSQL to
    # check in the claim), its own id in the record.
    assert one["first_run_id"] is None and other["first_run_id"] is None
    assert store.get_run(alone).first_run_id == alone
    assert one["status"] == RunStatus.RUNNING and one["heartbeat_at"] is not None
    assert one["params"] == {"day": "monday"} and one["paths"] == ["/in/a.png"]


def test_one_statement_claim_stores_times_as_every_other_write_does(store: Store) -> None:
    """A fire's scheduled instant is a whole second: stored as SQLAlchemy stores it (on SQLite its
    DATETIME text, six digits of microseconds), a query for the instant finds the run, and the
    text sorts with every other row's."""
    instant = utcnow().replace(microsecond=0)
    alone, _ = store.claim(job=JOB, fire_key="alone", trigger="schedule", scheduled_at=instant)
    leased, _ = store.claim(
        job=JOB, fire_key="leased", trigger="schedule", scheduled_at=instant, lease_ttl_s=60.0
    )

    with store.read() as conn:
        found = conn.execute(sa.select(runs.c.id).where(runs.c.scheduled_at == instant)).scalars().all()
        stored = dict(conn.execute(sa.select(runs.c.id, sa.cast(runs.c.scheduled_at, sa.Text))).all())

    assert sorted(found) == sorted([alone, leased])
    assert stored[alone] == stored[leased]


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 3, 29, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 12, 2, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 10, 25, 2, 30, 0, 1, tzinfo=ZoneInfo("Europe/Berlin")),
        datetime(999, 1, 1, 0, 0, 0, 500, tzinfo=UTC),
    ],
    ids=["whole second", "last microsecond", "another zone", "three-digit year"],
)
def test_the_sqlite_time_text_is_sqlalchemys(moment: datetime) -> None:
    from sqlalchemy.dialects.sqlite import DATETIME

    dialect = sa.create_engine("sqlite://").dialect
    ours = runs.c.queued_at.type.dialect_impl(dialect).bind_processor(dialect)

    assert ours(moment) == DATETIME().bind_processor(dialect)(naive_utc(moment))
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        ours(moment.replace(tzinfo=None))


def test_a_retry_claims_its_own_row_and_its_loser_names_it(store: Store) -> None:
    first, _ = store.claim(job=JOB, fire_key="f", trigger="schedule")
    retry, _ = store.claim(job=JOB, fire_key="f", trigger="schedule", attempt=2, first_run_id=first)

    with pytest.raises(AlreadyRan, match=f"already ran as run {retry} "):
        store.claim(job=JOB, fire_key="f", trigger="schedule", attempt=2, first_run_id=first)
    with pytest.raises(AlreadyRan, match=f"already ran as run {first} "):
        store.claim(job=JOB, fire_key="f", trigger="schedule")

    assert row_of(store, retry)["first_run_id"] == first
    assert row_of(store, retry)["attempt"] == 2


def test_a_loser_is_told_who_won_whether_its_last_claim_won_or_lost(store: Store, database_url: str) -> None:
    """After won claims a process sends the plain insert and asks who has the fire only when it
    lost; after a lost one, the full statement (PostgreSQL) or a read first (SQLite)."""
    other = Store(database_url)
    try:
        won, _ = store.claim(job=JOB, fire_key="a", trigger="schedule")
        for key in ("b", "c", "c2", "c3"):  # its own connection from the second, won in a row
            other.claim(job=JOB, fire_key=key, trigger="schedule")
        for _ in range(2):  # lost after wins, then after a loss
            with pytest.raises(AlreadyRan, match=f"already ran as run {won} "):
                other.claim(job=JOB, fire_key="a", trigger="schedule")
        after_loss, _ = other.claim(job=JOB, fire_key="d", trigger="schedule")
        retry, _ = other.claim(job=JOB, fire_key="a", trigger="schedule", attempt=2, first_run_id=won)
    finally:
        other.engine.dispose()

    assert row_of(store, after_loss)["first_run_id"] is None
    assert row_of(store, retry)["first_run_id"] == won


def _claim_all(url: str, keys: list[str], start: Any, results: Any) -> None:
    store = Store(url)
    won, named = [], 0
    start.wait()
    for key in keys:
        try:
            run_id, _ = store.claim(job=JOB, fire_key=key, trigger="schedule")
            won.append((key, run_id))
        except AlreadyRan as exc:
            named += "already ran as run" in str(exc)
    results.put((won, named))


def test_processes_claiming_the_same_fires_win_each_once(database_url: str) -> None:
    """Four processes (as four daemons) try the same 150 fires in the same order."""
    Store(database_url).ensure_schema()
    keys = [f"schedule:{n:04d}" for n in range(150)]
    context = mp.get_context("fork")
    start, results = context.Event(), context.Queue()
    procs = [context.Process(target=_claim_all, args=(database_url, keys, start, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)

    won = [pair for pairs, _ in outcomes for pair in pairs]
    assert sorted(key for key, _ in won) == keys
    store = Store(database_url)
    with store.read() as conn:
        rows = conn.execute(sa.select(runs.c.id, runs.c.fire_key).where(runs.c.job == JOB)).all()
    assert sorted(rows) == sorted((run_id, key) for key, run_id in won)
    # Losers learn who won, except on PostgreSQL when the winner committed mid-statement.
    assert sum(named for _, named in outcomes) > 0


def test_sqlite_write_lock_is_held_only_while_the_statement_runs(tmp_path: Any) -> None:
    """A claim is one statement: no BEGIN, no second statement, no COMMIT in a transaction that
    holds the write lock while Python runs between them."""
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    store = Store(url)
    store.ensure_schema()
    statements: list[str] = []
    sa.event.listen(
        store.engine, "checkout", lambda dbapi, _record, _proxy: dbapi.set_trace_callback(statements.append)
    )

    store.claim(job=JOB, fire_key="one", trigger="schedule")

    assert len(statements) == 1 and statements[0].lstrip().startswith("INSERT INTO runs")


def test_sqlite_claim_after_a_loss_is_answered_without_the_write_lock(tmp_path: Any) -> None:
    """Once a process has lost a fire it reads before it writes: a fire already claimed is
    answered while another program holds the write lock; an unclaimed one waits for it."""
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    store = Store(url, lock_timeout_s=0.5)
    winner, _ = store.claim(job=JOB, fire_key="taken", trigger="schedule")
    with pytest.raises(AlreadyRan):
        store.claim(job=JOB, fire_key="taken", trigger="schedule")  # lost: reads first from now on

    writer = sqlite3.connect(tmp_path / "runner.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another program's long write transaction
    try:
        with pytest.raises(AlreadyRan, match=f"run {winner} "):  # not DatabaseBusy: it did not wait
            store.claim(job=JOB, fire_key="taken", trigger="schedule")
        with pytest.raises(DatabaseBusy):
            store.claim(job=JOB, fire_key="free", trigger="schedule")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert store.claim(job=JOB, fire_key="free", trigger="schedule")[0] > winner


def test_sqlite_first_claim_takes_its_turn_at_the_writers_queue_and_repeat_claims_do_not(
    tmp_path: Any,
) -> None:
    """A process's first claim (`runner run`) queues behind a writer of ours that holds the
    writers' queue (stopped mid-write: it is met before the job starts); a repeat claim (a
    daemon's worker) leaves the arbitration of its one-row insert to SQLite's own lock."""
    import fcntl

    url = f"sqlite:///{tmp_path / 'runner.db'}"
    Store(url).ensure_schema()
    store = Store(url, lock_timeout_s=0.5)
    with open(f"{tmp_path / 'runner.db'}-writers.lock", "a") as queue:  # a stuck writer of ours
        fcntl.flock(queue, fcntl.LOCK_EX)
        with pytest.raises(DatabaseBusy):
            store.claim(job=JOB, fire_key="first", trigger="schedule")
        fcntl.flock(queue, fcntl.LOCK_UN)
        store.claim(job=JOB, fire_key="first", trigger="schedule")
        fcntl.flock(queue, fcntl.LOCK_EX)
        again, _ = store.claim(job=JOB, fire_key="again", trigger="schedule")
    assert row_of(store, again)["status"] == RunStatus.RUNNING


APP = "fireclaim-test"


def _terminate_our_connections(store: Store) -> int:
    """The server ends this store's sessions (what a restart does to them)."""
    admin = sa.create_engine(
        store.engine.url.difference_update_query(["application_name"]), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :app"
                ),
                {"app": APP},
            ).scalar_one()
    finally:
        admin.dispose()


@pytest.mark.parametrize("claims_before", [1, 2], ids=["borrowed from the pool", "kept for claims"])
def test_postgresql_connection_dropped_while_pooled_is_replaced(
    database_url: str, backend: str, claims_before: int
) -> None:
    """The server drops the connections (a restart): the next claim works when the connection
    was idle (it is pinged), or fails once when it was used a moment ago, and then works. The
    same for a process's first claim (a connection of the pool) and its later ones (the
    connection it keeps for claims)."""
    if backend != "postgresql":
        pytest.skip("a server that drops connections: PostgreSQL")
    store = Store(f"{database_url}&application_name={APP}")
    for n in range(claims_before):
        store.claim(job=JOB, fire_key=f"before {n}", trigger="schedule")
    assert _terminate_our_connections(store) >= 1

    time.sleep(PING_IDLE_S + 0.2)  # idle long enough to be pinged before its next use
    run_id, _ = store.claim(job=JOB, fire_key="after", trigger="schedule")
    assert row_of(store, run_id)["fire_key"] == "after"

    # Dropped and used again at once (no ping): one clear failure, then a fresh connection.
    assert _terminate_our_connections(store) >= 1
    with pytest.raises(StorageError) as failed:
        store.claim(job=JOB, fire_key="at once", trigger="schedule")
    assert "\n" not in str(failed.value)
    run_id, _ = store.claim(job=JOB, fire_key="at once", trigger="schedule")
    assert row_of(store, run_id)["fire_key"] == "at once"
    store.engine.dispose()


@pytest.mark.parametrize("idle", [False, True], ids=["used at once", "pinged first"])
def test_postgresql_unreachable_claim_is_a_storage_error(database_url: str, backend: str, idle: bool) -> None:
    """The server gone and not taking new connections: the claim fails with the store's one-line
    StorageError, whether the pooled connection fails its statement or its ping (the pool then
    reconnects, and that error came out of the pool as the driver's own, which the daemon's
    worker did not catch: it died, and the files of its fire waited for the next rescan)."""
    if backend != "postgresql":
        pytest.skip("a server that goes away: PostgreSQL")
    url = sa.engine.make_url(database_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    store = Store(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    try:
        store.claim(job=JOB, fire_key="before", trigger="schedule")
        proxy.cut()
        if idle:
            time.sleep(PING_IDLE_S + 0.2)
        with pytest.raises(StorageError) as failed:
            store.claim(job=JOB, fire_key="during", trigger="schedule")
        assert "\n" not in str(failed.value) and "cannot use database" in str(failed.value)
        proxy.restore()
        run_id, _ = store.claim(job=JOB, fire_key="during", trigger="schedule")
        assert row_of(store, run_id)["fire_key"] == "during"
    finally:
        store.engine.dispose()
        proxy.close()


def test_a_process_that_claims_again_keeps_one_connection_for_its_claims(database_url: str) -> None:
    """The first claim borrows a connection of the pool (`runner run` claims once and opens
    nothing more); from the second on, a claim takes nothing from the pool."""
    store = Store(database_url)
    store.ensure_schema()
    checkouts: list[int] = []
    sa.event.listen(store.engine, "checkout", lambda *_: checkouts.append(1))
    for n in range(5):
        store.claim(job=JOB, fire_key=f"again {n}", trigger="schedule")
    assert len(checkouts) == 2  # the first claim's, and the one the process keeps
    with pytest.raises(AlreadyRan):
        store.claim(job=JOB, fire_key="again 0", trigger="schedule")
    assert len(checkouts) == 2
    store.engine.dispose()


def _claim_in_child(key: str, results: Any) -> None:
    store = _inherited[0]  # the parent's Store, as a forked worker inherits it
    try:
        run_id, _ = store.claim(job=JOB, fire_key=key, trigger="schedule")
        results.put(("ok", run_id))
    except Exception as exc:  # the test reports it
        results.put(("error", repr(exc)))


_inherited: list[Store] = []


def test_a_forked_child_claims_on_its_own_connection(database_url: str) -> None:
    """A child forked after its parent kept a claim connection opens its own (a connection
    shared across a fork would mix the two processes' statements), and the parent's still works.
    The fork happens while another thread of the parent is inside a claim: the child does not
    inherit that claim's lock as held."""
    store = Store(database_url)
    for n in range(2):
        store.claim(job=JOB, fire_key=f"parent {n}", trigger="schedule")
    _inherited[:] = [store]
    context = mp.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_claim_in_child, args=("child", results), daemon=True)
    with store.fire_claim()._lock:  # as a claim running in another thread holds it
        child.start()
    outcome = results.get(timeout=60)
    child.join(timeout=30)
    assert outcome[0] == "ok", outcome
    run_id, _ = store.claim(job=JOB, fire_key="parent after", trigger="schedule")
    assert row_of(store, run_id)["fire_key"] == "parent after"
    assert row_of(store, outcome[1])["pid"] == child.pid
    store.engine.dispose()
