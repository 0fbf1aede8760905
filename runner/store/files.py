"""File claims: which version of which watched file belongs to which fire, and how far it got
(claimed, done, pending again, failed, vanished)."""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from runner.models import ACTIVE_STATUSES, ClaimState, RunStatus, file_claims, runs, utcnow
from runner.store.base import StorePart
from runner.store.clock import server_now
from runner.store.engine import dialect_insert
from runner.store.host import HOSTNAME, PIDNS, pid_alive

MAX_FILE_ATTEMPTS = 3  # a file whose runs failed this often is left alone (state 'failed')
ORPHAN_CLAIM_S = 120.0  # a claim whose run never appeared is released after this long


class FileClaims(StorePart):
    """`store.files`: claim file versions for a fire, acknowledge and settle them after the run."""

    __slots__ = ()

    def claim(self, job: str, fire_key: str, versions: list[tuple[str, int, int]]) -> list[str]:
        """Claim each (path, size, mtime_ns) not yet handed out; returns the paths now ours.

        The unique (job, path, size, mtime_ns) makes two daemons, a rescan and a duplicate
        event agree on one owner per file version; a version whose run failed is 'pending' and
        may be claimed again, MAX_FILE_ATTEMPTS times in all.
        """
        if not versions:
            return []
        # In path order: two daemons claiming overlapping batches then lock the rows they both
        # want in one order, and never deadlock (PostgreSQL: "deadlock detected", which the
        # daemon took for the database going away).
        versions = sorted(versions)
        owner = {"host": HOSTNAME, "pid": os.getpid(), "pidns": PIDNS}
        rows = [
            {
                "job": job,
                "path": p,
                "size": size,
                "mtime_ns": mtime,
                "fire_key": fire_key,
                "state": ClaimState.CLAIMED,
                "attempts": 1,
                **owner,
            }
            for p, size, mtime in versions
        ]
        with self.begin() as conn:
            # claimed_at is the database's clock: an orphan claim's age is measured on it
            insert = dialect_insert(conn.dialect.name)(file_claims).values(claimed_at=server_now())
            conn.execute(insert.on_conflict_do_nothing(), rows)
            conn.execute(
                sa.update(file_claims)
                .where(
                    file_claims.c.job == job,
                    file_claims.c.path == sa.bindparam("b_path"),
                    file_claims.c.size == sa.bindparam("b_size"),
                    file_claims.c.mtime_ns == sa.bindparam("b_mtime"),
                    file_claims.c.state == ClaimState.PENDING,
                )
                .values(
                    state=ClaimState.CLAIMED,
                    fire_key=fire_key,
                    claimed_at=server_now(),
                    attempts=file_claims.c.attempts + 1,
                    **owner,
                ),
                [{"b_path": p, "b_size": size, "b_mtime": mtime} for p, size, mtime in versions],
            )
            claimed = conn.execute(
                sa.select(file_claims.c.path)
                .where(
                    file_claims.c.job == job,
                    file_claims.c.fire_key == fire_key,
                    file_claims.c.state == ClaimState.CLAIMED,
                )
                .order_by(file_claims.c.path)  # a run walks its files in name order, every time
            )
            return [row[0] for row in claimed]

    def ack(self, job: str, fire_key: str, paths: list[str]) -> None:
        """These files of the run are processed, whatever happens to the rest of it."""
        self._mark(job, fire_key, paths, ClaimState.DONE)

    def mark_vanished(self, job: str, fire_key: str, paths: list[str]) -> None:
        """Claimed files deleted before the run could open them: never handed out, never retried."""
        self._mark(job, fire_key, paths, ClaimState.VANISHED, only_claimed=True)

    def _mark(
        self, job: str, fire_key: str, paths: list[str], state: ClaimState, *, only_claimed: bool = False
    ) -> None:
        """Give these files of the fire their final state (done or vanished), one statement."""
        if not paths:
            return
        where = [
            file_claims.c.job == job,
            file_claims.c.fire_key == fire_key,
            file_claims.c.path == sa.bindparam("b_path"),
        ]
        if only_claimed:
            where.append(file_claims.c.state == ClaimState.CLAIMED)
        with self.begin() as conn:
            conn.execute(
                sa.update(file_claims).where(*where).values(state=state.value, done_at=utcnow()),
                [{"b_path": p} for p in paths],
            )

    def done(self, job: str, fire_key: str) -> set[str]:
        """The files of this fire already processed (by an earlier attempt of it)."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(file_claims.c.path).where(
                    file_claims.c.job == job,
                    file_claims.c.fire_key == fire_key,
                    file_claims.c.state == ClaimState.DONE,
                )
            )
            return {row[0] for row in rows}

    def settle(
        self, job: str, fire_key: str, succeeded: bool, *, started: bool = True, blame: str | None = None
    ) -> None:
        """After the run: its files are done, or (not acknowledged, run failed) claimable again.
        A run that never started (overlap, already ran) does not count as an attempt; a failed run
        that was on file `blame` (ctx.files()) counts an attempt for that file only."""
        now = utcnow()
        mine = (
            (file_claims.c.job == job)
            & (file_claims.c.fire_key == fire_key)
            & (file_claims.c.state == ClaimState.CLAIMED)
        )
        with self.begin() as conn:
            if succeeded:
                conn.execute(sa.update(file_claims).where(mine).values(state=ClaimState.DONE, done_at=now))
                return
            untouched = mine if blame is None else mine & (file_claims.c.path != blame)
            if not started or blame is not None:  # claiming counted an attempt: take it back
                conn.execute(
                    sa.update(file_claims)
                    .where(untouched)
                    .values(state=ClaimState.PENDING, attempts=file_claims.c.attempts - 1)
                )
                if not started:
                    return
            conn.execute(
                sa.update(file_claims)
                .where(mine)
                .values(
                    state=sa.case(
                        (file_claims.c.attempts >= MAX_FILE_ATTEMPTS, ClaimState.FAILED),
                        else_=ClaimState.PENDING,
                    )
                )
            )

    def release_orphans(self, job: str, gone: Collection[str] = ()) -> tuple[int, int]:
        """Claims left behind by a run that ended badly without settling them (its supervisor was
        killed), or whose run never started because the claiming daemon died: make them claimable
        again. `gone`: fire keys this process claimed whose supervisor worker died, released at
        once when their run never started. Either way the claim counts as an attempt, so files
        that kill whatever takes them end `failed`. Returns (fires released, fires still held by
        a live run or claimant)."""
        with self.read() as conn:
            open_claims = conn.execute(
                sa.select(
                    file_claims.c.fire_key,
                    file_claims.c.host,
                    file_claims.c.pid,
                    file_claims.c.pidns,
                    sa.func.min(file_claims.c.claimed_at) < server_now(-ORPHAN_CLAIM_S),
                )
                .where(file_claims.c.job == job, file_claims.c.state == ClaimState.CLAIMED)
                .group_by(file_claims.c.fire_key, file_claims.c.host, file_claims.c.pid, file_claims.c.pidns)
            ).all()
        released = held = 0
        for fire_key, host, pid, pidns, orphaned in open_claims:
            status = self._newest_run_status(job, fire_key)
            if status is None:  # no run yet: still coming, unless whoever was to start it is gone
                claimant_gone = fire_key in gone or (
                    host == HOSTNAME and pidns == PIDNS and not pid_alive(pid)
                )
                if not claimant_gone and not orphaned:
                    held += 1
                    continue
            elif status in ACTIVE_STATUSES:
                held += 1
                continue
            self.settle(job, fire_key, succeeded=status == RunStatus.SUCCEEDED)
            released += 1
        return released, held

    def _newest_run_status(self, job: str, fire_key: str) -> str | None:
        """The status of the fire's newest attempt; None when no run of it was recorded."""
        with self.read() as conn:
            run = conn.execute(
                sa.select(runs.c.status)
                .where(runs.c.job == job, runs.c.fire_key == fire_key)
                .order_by(runs.c.attempt.desc())
                .limit(1)
            ).first()
        return None if run is None else run.status

    def versions(self, job: str, state: str | None = None) -> list[dict[str, Any]]:
        """The job's file versions as claimed, oldest claim first (optionally of one state)."""
        query = sa.select(
            file_claims.c.path,
            file_claims.c.size,
            file_claims.c.mtime_ns,
            file_claims.c.state,
            file_claims.c.attempts,
            file_claims.c.fire_key,
            file_claims.c.claimed_at,
            file_claims.c.done_at,
        ).where(file_claims.c.job == job)
        if state:
            query = query.where(file_claims.c.state == state)
        with self.begin() as conn:
            rows = conn.execute(query.order_by(file_claims.c.claimed_at, file_claims.c.id)).mappings()
            return [dict(row) for row in rows]

    def retry(self, job: str, paths: list[str] | None = None) -> list[str]:
        """Failed files (all of the job's, or those of `paths`) become claimable again, with their
        attempts reset; returns the paths changed."""
        failed = (file_claims.c.job == job) & (file_claims.c.state == ClaimState.FAILED)
        if paths is not None:
            failed = failed & file_claims.c.path.in_(paths)
        with self.begin() as conn:
            changed = [row[0] for row in conn.execute(sa.select(file_claims.c.path).where(failed))]
            conn.execute(sa.update(file_claims).where(failed).values(state=ClaimState.PENDING, attempts=0))
            return changed

    def counts(self, job: str) -> dict[str, int]:
        """How many of the job's file versions are in each state."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(file_claims.c.state, sa.func.count())
                .where(file_claims.c.job == job)
                .group_by(file_claims.c.state)
            )
            return {state: count for state, count in rows}
