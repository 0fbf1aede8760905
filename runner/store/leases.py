"""Overlap leases: one row per job names the run that may run now (overlap = skip or queue)."""

from __future__ import annotations

import os

import sqlalchemy as sa

from runner.errors import DatabaseError
from runner.models import ACTIVE_STATUSES, RunStatus, leases, runs, utcnow
from runner.store.base import StorePart
from runner.store.clock import server_now
from runner.store.host import HOSTNAME
from runner.store.records import RunRecord, record_of

LEASE_ATTEMPTS = 5  # compare-and-swap rounds before contention is an error

# A claim before every run and a finish after it use these: building a statement anew costs more
# than running it on SQLite. Expiry is the database's clock, never this host's.
_SELECT_LEASE = sa.select(leases, (leases.c.expires_at < server_now()).label("expired")).where(
    leases.c.job == sa.bindparam("b_job")
)
_INSERT_LEASE = sa.insert(leases).values(expires_at=server_now(sa.bindparam("b_ttl_s", type_=sa.Float)))
_RELEASE_LEASE = sa.delete(leases).where(
    leases.c.job == sa.bindparam("b_job"), leases.c.run_id == sa.bindparam("b_run_id")
)


class LeaseRace(Exception):
    """Another run changed the lease between our read and our write; the transaction is retried."""


class Leases(StorePart):
    """`store.leases`: take, renew, hand on and give up a job's overlap lease."""

    __slots__ = ()

    def acquire(self, job: str, run_id: int, ttl_s: float) -> RunRecord | None:
        """Take the job's lease for run_id; returns None on success, else the run holding it."""
        for _ in range(LEASE_ATTEMPTS):
            try:
                with self.begin() as conn:
                    holder = self.take(conn, job, run_id, ttl_s)
                    if holder is None:
                        conn.execute(
                            sa.update(runs)
                            .where(runs.c.id == run_id)
                            .values(status=RunStatus.RUNNING, started_at=utcnow())
                        )
                    return holder
            except (LeaseRace, sa.exc.IntegrityError):
                pass  # another run took the lease first: read it again
        raise DatabaseError(f"could not take the overlap lease of job {job}: too much contention")

    @staticmethod
    def take(conn: sa.Connection, job: str, run_id: int, ttl_s: float) -> RunRecord | None:
        """In the caller's transaction: the lease for run_id, or the run holding it. Every write
        is a compare-and-swap (insert of a new key, or update of the exact lease row we read), so
        two hosts racing on PostgreSQL cannot both win; a lost race raises LeaseRace."""
        values = dict(job=job, run_id=run_id, host=HOSTNAME, pid=os.getpid())
        holder = conn.execute(_SELECT_LEASE, {"b_job": job}).first()
        if holder is None:
            conn.execute(_INSERT_LEASE, {**values, "b_ttl_s": ttl_s})
            return None
        held_by = conn.execute(sa.select(runs).where(runs.c.id == holder.run_id)).first()
        if not holder.expired and held_by and held_by.status in ACTIVE_STATUSES:
            return record_of(held_by)
        swapped = conn.execute(
            sa.update(leases)
            .where(
                leases.c.job == job,
                leases.c.run_id == holder.run_id,
                leases.c.expires_at == holder.expires_at,
            )
            .values(**values, expires_at=server_now(ttl_s))
        ).rowcount
        if not swapped:
            raise LeaseRace
        return None

    @staticmethod
    def renew(conn: sa.Connection, job: str, run_id: int, ttl_s: float) -> None:
        """In the caller's transaction (a run's heartbeat): the run's lease lasts `ttl_s` more."""
        conn.execute(
            sa.update(leases)
            .where(leases.c.job == job, leases.c.run_id == run_id)
            .values(expires_at=server_now(ttl_s))
        )

    @staticmethod
    def drop(conn: sa.Connection, job: str, run_id: int) -> None:
        """In the caller's transaction (a run's end): give up the run's lease of the job."""
        conn.execute(_RELEASE_LEASE, {"b_job": job, "b_run_id": run_id})

    @staticmethod
    def drop_all_of(conn: sa.Connection, run_id: int) -> None:
        """In the caller's transaction (a run marked lost): whatever lease the run held."""
        conn.execute(sa.delete(leases).where(leases.c.run_id == run_id))

    def move(self, job: str, from_run_id: int, to_run_id: int) -> None:
        """Hand the lease to the next attempt of the same fire."""
        with self.begin() as conn:
            conn.execute(
                sa.update(leases)
                .where(leases.c.job == job, leases.c.run_id == from_run_id)
                .values(run_id=to_run_id)
            )

    def release(self, job: str, run_id: int) -> None:
        with self.begin() as conn:
            conn.execute(sa.delete(leases).where(leases.c.job == job, leases.c.run_id == run_id))
