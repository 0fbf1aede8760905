"""Runs: where a fire becomes a run row (claim), and how the row follows the run: its start,
heartbeats and end, or `lost` once its supervisor is gone."""

from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from runner.errors import AlreadyRan, DatabaseError
from runner.models import ACTIVE_STATUSES, RunStatus, SkipReason, Trigger, runs, utcnow
from runner.store.clock import server_now
from runner.store.engine import dialect_insert
from runner.store.host import HOSTNAME, PIDNS, pid_alive
from runner.store.leases import LEASE_ATTEMPTS, LeaseRace, Leases
from runner.store.queue import WouldWait
from runner.store.records import RunEnd, RunRecord, record_of

if TYPE_CHECKING:
    from runner.store.database import Store
    from runner.store.fireclaim import FireClaim

# The hot path (a claim before every run, a finish after it) reuses these statements: building a
# statement anew costs more than running it on SQLite. Heartbeats are the database's clock: a
# run is lost when the database says its supervisor went quiet, whatever any host's clock says.
_INSERT_RUN: dict[str, Any] = {}  # per dialect: insert-or-nothing, so a lost race costs no error
# Who has a fire, by its first attempt or a retry: each unique key is a partial index, which a
# lookup uses only when its WHERE says which part in so many words (not `attempt = :param`).
_FIRE = (runs.c.job == sa.bindparam("b_job"), runs.c.fire_key == sa.bindparam("b_fire_key"))
_SELECT_FIRE = {
    True: sa.select(runs.c.id, runs.c.status).where(*_FIRE, runs.c.attempt == sa.literal_column("1")),
    False: sa.select(runs.c.id, runs.c.status).where(
        *_FIRE, runs.c.attempt > sa.literal_column("1"), runs.c.attempt == sa.bindparam("b_attempt")
    ),
}
_UPDATE_RUN = sa.update(runs).where(runs.c.id == sa.bindparam("b_run_id"))


class RunWrites:
    """The half of `Store` that writes runs (`store.claim(...)`, `store.finish(...)`); the
    history's queries are the other half (runner/store/history.py)."""

    def claim(
        self: Store,
        *,
        job: str,
        fire_key: str,
        trigger: str,
        attempt: int = 1,
        first_run_id: int | None = None,
        params: dict[str, Any] | None = None,
        paths: list[str] | None = None,
        scheduled_at: datetime | None = None,
        late: bool = False,
        lease_ttl_s: float | None = None,
        status: RunStatus = RunStatus.RUNNING,
        error: str | None = None,
        reason: str | None = None,
        late_s: float | None = None,
    ) -> tuple[int, RunRecord | None]:
        """Insert the run row and, with `lease_ttl_s`, take the job's overlap lease, in one transaction.

        The unique (job, fire_key) of first attempts makes each fire run once: a second claim raises
        AlreadyRan. Returns (run id, None) when the run may start, or (run id, holder) when another
        run holds the lease; the row is then 'queued' and the caller skips or waits.
        """
        now = utcnow()
        values = dict(
            job=job,
            fire_key=fire_key,
            trigger=trigger,
            attempt=attempt,
            first_run_id=first_run_id,
            status=str(status),
            late=late,
            scheduled_at=scheduled_at,
            queued_at=now,
            started_at=now if status is RunStatus.RUNNING else None,
            ended_at=None if status.active else now,
            error=error,
            host=HOSTNAME,
            pid=os.getpid(),
            pidns=PIDNS,
            params=params,
            paths=paths,
            reason=reason,
            late_s=late_s,
        )
        if lease_ttl_s is None and not self._rollback_only:
            return self._claim_alone(values), None
        for _ in range(LEASE_ATTEMPTS):
            try:
                with self.begin() as conn:
                    claimed = _insert_run(conn, values, lease_ttl_s)
                    if claimed is None:  # the fire (this attempt of it) has its row: who has it
                        taken = {"b_job": job, "b_fire_key": fire_key, "b_attempt": attempt}
                        existing = conn.execute(_SELECT_FIRE[attempt == 1], taken).first()
            except LeaseRace:
                continue
            except sa.exc.IntegrityError:  # the lease insert raced with another claim: try again
                continue
            if claimed is not None:
                return claimed
            if existing is not None:
                raise _already_ran(job, fire_key, existing.id, existing.status)
        raise DatabaseError(f"could not take the overlap lease of job {job}: too much contention")

    def fire_claim(self: Store) -> FireClaim:
        """The one-statement claim of this store's engine (made on first use)."""
        if self._fire_claim is None:
            from runner.store.fireclaim import FireClaim

            self._fire_claim = FireClaim(self.engine)
        return self._fire_claim

    def _claim_alone(self: Store, values: dict[str, Any]) -> int:
        """A claim without a lease: one statement (runner/store/fireclaim.py); the run id, or
        AlreadyRan naming the run that has the fire."""
        self.ensure_schema()
        turn = self._queue.held if self._queue is not None else nullcontext
        with self.failures():
            run_id, won, status = self.fire_claim().claim(values, turn)
        if won:
            return run_id
        raise _already_ran(values["job"], values["fire_key"], run_id, status)

    def record_skipped(
        self: Store, job: str, trigger: str, fires: list[tuple[str, datetime | None]], reason: str, error: str
    ) -> int:
        """One `skipped` row per (fire key, scheduled time) nobody will run, in one transaction; a
        fire that already has a row (somebody ran it after all) is left as it is. Returns rows added."""
        if not fires:
            return 0
        now = utcnow()
        rows = [
            dict(
                job=job,
                fire_key=key,
                trigger=trigger,
                attempt=1,
                status=RunStatus.SKIPPED,
                late=False,
                scheduled_at=at,
                queued_at=now,
                heartbeat_at=now,
                ended_at=now,
                error=error,
                reason=reason,
                host=HOSTNAME,
                pid=os.getpid(),
            )
            for key, at in fires
        ]
        with self.begin() as conn:
            insert = dialect_insert(conn.dialect.name)(runs).on_conflict_do_nothing()
            added = conn.execute(insert.returning(runs.c.id), rows).scalars().all()
        return len(added)

    def take_stopped_retry(self: Store, run_id: int, note: str) -> bool:
        """Mark a stopped retry as resumed; False if another daemon took it first."""
        with self.begin() as conn:
            return bool(
                conn.execute(
                    sa.update(runs)
                    .where(runs.c.id == run_id, runs.c.reason == SkipReason.RETRY_STOPPED)
                    .values(reason=SkipReason.RETRY_RESUMED, error=note)
                ).rowcount
            )

    def retry_lost(self: Store, jobs: dict[str, tuple[int, float]]) -> list[RunRecord]:
        """Take up lost runs of scheduled fires for a retry: per job, (retries, window) says how
        many retries it has and how long after a run was marked lost (on the database's clock)
        one may still start. Each next attempt's row is inserted queued, and the unique
        (job, fire key, attempt) gives it to one caller only: the rows returned are this caller's
        to run (with `resume`); another daemon's are left out."""
        if not jobs:
            return []
        later = runs.alias("later")
        query = sa.select(runs, server_now().label("db_now")).where(
            runs.c.status == RunStatus.LOST,
            runs.c.trigger == Trigger.SCHEDULE,
            runs.c.job.in_(list(jobs)),
            runs.c.ended_at >= server_now(-max(window for _, window in jobs.values())),
            ~sa.exists().where(
                later.c.job == runs.c.job,
                later.c.fire_key == runs.c.fire_key,
                later.c.attempt > runs.c.attempt,
            ),
        )
        with self.read() as conn:
            lost = [(record_of(row), row.db_now) for row in conn.execute(query)]
        taken = []
        for record, db_now in lost:
            retries, window_s = jobs[record.job]
            if record.attempt > retries or (db_now - record.ended_at).total_seconds() > window_s:
                continue
            now = utcnow()
            values = dict(
                job=record.job,
                fire_key=record.fire_key,
                trigger=record.trigger,
                attempt=record.attempt + 1,
                first_run_id=record.first_run_id or record.id,
                status=RunStatus.QUEUED,
                late=True,
                scheduled_at=record.scheduled_at,
                queued_at=now,
                heartbeat_at=server_now(),
                host=HOSTNAME,
                pid=os.getpid(),
                pidns=PIDNS,
                params=record.params,
                error=f"retry of run {record.id}, lost: {record.error}",
            )
            with self.begin() as conn:
                insert = dialect_insert(conn.dialect.name)(runs).values(**values).on_conflict_do_nothing()
                run_id = conn.execute(insert.returning(runs.c.id)).scalar()
            if run_id is not None:
                taken.append(self.get_run(run_id))
        return [record for record in taken if record is not None]

    def requeue(self: Store, record: RunRecord) -> None:
        """A stopped retry's row, made this supervisor's queued run again (late since it was queued)."""
        now = utcnow()
        values = dict(
            status=RunStatus.QUEUED,
            host=HOSTNAME,
            pid=os.getpid(),
            pidns=PIDNS,
            heartbeat_at=server_now(),
            ended_at=None,
            late=True,
            late_s=(now - record.queued_at).total_seconds(),
        )
        with self.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == record.id).values(**values))

    def start(self: Store, run_id: int, started_at: datetime) -> None:
        """A queued attempt starts now (a first attempt is marked running when it is claimed)."""
        with self.begin() as conn:
            conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(status=RunStatus.RUNNING, started_at=started_at, heartbeat_at=server_now())
            )

    def heartbeat(
        self: Store,
        run_id: int,
        lease_job: str | None,
        ttl_s: float,
        *,
        wait: bool = True,
        job_pid: int | None = None,
        cgroup: str | None = None,
    ) -> bool:
        """The run (and its lease) is alive; with `job_pid`, where its job's processes are (the
        job's pid and its cgroup, if any), for whoever reaps a dead supervisor.

        With wait=False (the supervisor of a running job) nothing waits for another writer: a
        busy database means this beat is skipped (False) and the next one tries again."""
        values: dict[str, Any] = {"heartbeat_at": server_now()}
        if job_pid is not None:
            values.update(job_pid=job_pid, cgroup=cgroup)
        try:
            with self.begin() if wait else self._begin_now() as conn:
                conn.execute(sa.update(runs).where(runs.c.id == run_id).values(**values))
                if lease_job:
                    Leases.renew(conn, lease_job, run_id, ttl_s)
        except WouldWait:
            return False
        return True

    def finish(self: Store, run_id: int, end: RunEnd, *, release_lease_of: str | None = None) -> None:
        """Record how a run ended (and give up the job's lease) in one transaction."""
        with self.begin() as conn:
            conn.execute(_UPDATE_RUN, {"b_run_id": run_id, **end.columns()})
            if release_lease_of:
                Leases.drop(conn, release_lease_of, run_id)

    def finish_late(self: Store, run_id: int, end: RunEnd, *, release_lease_of: str | None = None) -> bool:
        """Record an outcome kept while the database was away, unless the run was finished since
        (a run marked lost meanwhile gets its true outcome). True when written."""
        unfinished = (*ACTIVE_STATUSES, RunStatus.LOST)
        with self.begin() as conn:
            updated = conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id, runs.c.status.in_(unfinished))
                .values(**end.columns())
            ).rowcount
            if release_lease_of:
                Leases.drop(conn, release_lease_of, run_id)
        return bool(updated)

    def reap_lost(self: Store, stale_after_s: float, *, wait: bool = True) -> list[int]:
        """Mark active runs lost whose supervisor is gone, once every process of the run is gone.

        Where the supervisor's pid can be checked (this host, this boot, this PID namespace), a
        dead pid decides at once, and what is left of the job (its cgroup, its process group) is
        killed first: a run is never lost while its job still runs. Elsewhere a heartbeat older
        than `stale_after` on the database's clock decides (the job process died with its
        supervisor: parent-death signal), and the run is marked lost at the database's time.
        The candidates are found with a read; the write lock is taken only when there is one.
        With wait=False (read-only commands) a busy database means: leave it to the next caller.
        """
        verdicts = self._lost_verdicts(stale_after_s)
        if not verdicts:
            return []
        lost = []
        try:
            with self.begin() if wait else self._begin_now() as conn:
                for run_id, reason in verdicts:
                    updated = conn.execute(
                        sa.update(runs)
                        .where(runs.c.id == run_id, runs.c.status.in_(ACTIVE_STATUSES))
                        .values(status=RunStatus.LOST, ended_at=server_now(), error=reason)
                    ).rowcount
                    if updated:
                        lost.append(run_id)
                        Leases.drop_all_of(conn, run_id)
        except WouldWait:
            return []
        return lost

    def _lost_verdicts(self: Store, stale_after_s: float) -> list[tuple[int, str]]:
        """(run id, why it is lost) of each active run whose supervisor is gone; a run on this
        host has its leftover processes killed first, and is not lost while they live."""
        from runner.containment import kill_processes

        with self.read() as conn:
            active = conn.execute(
                sa.select(
                    runs.c.id,
                    runs.c.host,
                    runs.c.pid,
                    runs.c.pidns,
                    runs.c.heartbeat_at,
                    runs.c.job_pid,
                    runs.c.cgroup,
                    (runs.c.heartbeat_at < server_now(-stale_after_s)).label("stale"),
                ).where(runs.c.status.in_(ACTIVE_STATUSES))
            ).all()
        verdicts = []
        for run_id, host, pid, pidns, heartbeat_at, job_pid, cgroup, stale in active:
            if host == HOSTNAME and pidns == PIDNS:
                if pid_alive(pid):
                    continue
                reason = f"supervisor (pid {pid} on {host}) is gone"
                if not kill_processes(Path(cgroup) if cgroup else None, job_pid):
                    continue  # its processes do not die (yet): not lost while they live
            elif stale:
                reason = f"supervisor stopped reporting (last heartbeat {heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)"
            else:
                continue
            verdicts.append((run_id, reason))
        return verdicts


def _insert_run(
    conn: sa.Connection, values: dict[str, Any], lease_ttl_s: float | None
) -> tuple[int, RunRecord | None] | None:
    """Claim's transaction: the row, then (if asked) the lease; a held lease queues the row.
    None when the fire already has its row (nothing written)."""
    dialect = conn.dialect.name
    if dialect not in _INSERT_RUN:
        insert = dialect_insert(dialect)(runs).values(heartbeat_at=server_now())
        _INSERT_RUN[dialect] = insert.on_conflict_do_nothing().returning(runs.c.id)
    run_id = conn.execute(_INSERT_RUN[dialect], values).scalar()
    if run_id is None:
        return None
    holder = None
    if lease_ttl_s is not None:
        holder = Leases.take(conn, values["job"], run_id, lease_ttl_s)
        if holder is not None:
            conn.execute(_UPDATE_RUN, {"b_run_id": run_id, "status": RunStatus.QUEUED, "started_at": None})
    return run_id, holder


def _already_ran(job: str, fire_key: str, run_id: int | None, status: str | None) -> AlreadyRan:
    """The claim met the fire's row: somebody has it, whether or not we saw its id (PostgreSQL's
    one-statement claim cannot see a row committed while it ran)."""
    what = f"run {run_id} ({status})" if run_id is not None else "another run a moment ago"
    return AlreadyRan(f"job {job}: fire {fire_key} already ran as {what}; not started")
