"""Pruning the run history: which runs retention may remove, and removing them a batch at a time
(each batch its own short write transaction), then handing SQLite's freed pages back to the disk.

What is never removed: an active run (queued, running), a retry a stop cut short (the next daemon
may resume it), a run a lease names, a fire whose files are still claimed or pending, the newest
run of each job and its newest scheduled run (catch-up counts missed fires from it). A fire's
attempts go together, so `first_run_id` never names a removed run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from runner.models import ACTIVE_STATUSES, ClaimState, SkipReason, file_claims, leases, runs
from runner.store.base import StorePart

LIVE_CLAIMS = (ClaimState.CLAIMED, ClaimState.PENDING)
_OTHER = runs.alias("other_attempt")


@dataclass(frozen=True, slots=True)
class Protected:
    """What no retention setting removes, read once before a prune: runs by id, and fires."""

    run_ids: frozenset[int]
    active_ids: frozenset[int]  # queued or running: their logs are being written
    fires: frozenset[tuple[str, str]]  # (job, fire key) with live file claims


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    group: int  # the fire's first attempt
    job: str
    fire_key: str
    status: str
    reason: str | None
    queued_at: datetime
    started_at: datetime | None
    log_path: str | None


_CANDIDATE_COLUMNS = (
    runs.c.id,
    runs.c.first_run_id,
    runs.c.job,
    runs.c.fire_key,
    runs.c.status,
    runs.c.reason,
    runs.c.queued_at,
    runs.c.started_at,
    runs.c.log_path,
)


def _candidate(row: sa.Row) -> Candidate:
    return Candidate(
        row.id,
        row.first_run_id or row.id,
        row.job,
        row.fire_key,
        row.status,
        row.reason,
        row.queued_at,
        row.started_at,
        row.log_path,
    )


class RunPruning(StorePart):
    """`store.pruning`: the reads that find what retention removes, and the batched delete."""

    __slots__ = ()

    def jobs(self) -> list[str]:
        """Every job with a run in the history (configured or not), read by skipping through the
        (job, id) index instead of reading every row."""
        query = sa.text(
            "WITH RECURSIVE j(job) AS ("
            " SELECT MIN(job) FROM runs"
            " UNION ALL SELECT (SELECT MIN(job) FROM runs WHERE job > j.job) FROM j WHERE j.job IS NOT NULL"
            ") SELECT job FROM j WHERE job IS NOT NULL"
        )
        with self.read() as conn:
            return [row[0] for row in conn.execute(query)]

    def protected(self, jobs: Iterable[str]) -> Protected:
        active = sa.select(runs.c.id).where(runs.c.status.in_(ACTIVE_STATUSES))
        stopped = sa.select(runs.c.id).where(runs.c.reason == SkipReason.RETRY_STOPPED)
        leased = sa.select(leases.c.run_id)
        claimed = sa.select(file_claims.c.job, file_claims.c.fire_key).where(
            file_claims.c.state.in_(LIVE_CLAIMS)
        )
        with self.read() as conn:
            active_ids = frozenset(conn.execute(active).scalars())
            ids = set(active_ids) | set(conn.execute(stopped).scalars()) | set(conn.execute(leased).scalars())
            for job in jobs:
                newest = sa.select(runs.c.id).where(runs.c.job == job).order_by(runs.c.id.desc()).limit(1)
                ids.update(conn.execute(newest).scalars())
                ids.update(conn.execute(newest.where(runs.c.scheduled_at.is_not(None))).scalars())
            fires = frozenset((job, key) for job, key in conn.execute(claimed))
        return Protected(frozenset(ids), active_ids, fires)

    def count_bound(self, job: str, keep: int) -> int | None:
        """The id of the job's newest run beyond the newest `keep` (it and older ones are over the
        count), or None when the job has no more than `keep` runs."""
        query = sa.select(runs.c.id).where(runs.c.job == job).order_by(runs.c.id.desc()).offset(keep).limit(1)
        with self.read() as conn:
            return conn.execute(query).scalar()

    def candidates(
        self, job: str, *, after: int, upto_id: int | None, older_than: datetime | None, limit: int
    ) -> list[Candidate]:
        """The job's runs after id `after`, oldest first, that are over the count (id <= upto_id)
        or the age (queued before older_than); at most `limit`."""
        over = []
        if upto_id is not None:
            over.append(runs.c.id <= upto_id)
        if older_than is not None:
            over.append(runs.c.queued_at < older_than)
        if not over:
            return []
        query = (
            sa.select(*_CANDIDATE_COLUMNS)
            .where(runs.c.job == job, runs.c.id > after, sa.or_(*over))
            .order_by(runs.c.id)
            .limit(limit)
        )
        with self.read() as conn:
            return [_candidate(row) for row in conn.execute(query)]

    def attempts_of(self, groups: Iterable[int]) -> list[Candidate]:
        """Every attempt of these fires (by their first attempt's id)."""
        groups = sorted(set(groups))
        query = sa.select(*_CANDIDATE_COLUMNS).where(
            sa.or_(runs.c.first_run_id.in_(groups), runs.c.id.in_(groups))
        )
        with self.read() as conn:
            return [_candidate(row) for row in conn.execute(query)]

    def delete(self, ids: list[int]) -> int:
        """Remove these runs in one short write transaction. Checked again inside it: a run that
        became active since it was read stays, and so does every attempt of its fire."""
        if not ids:
            return 0
        statement = sa.delete(runs).where(
            runs.c.id.in_(ids),
            runs.c.status.not_in(ACTIVE_STATUSES),
            ~sa.exists().where(
                _OTHER.c.first_run_id == runs.c.first_run_id, _OTHER.c.status.in_(ACTIVE_STATUSES)
            ),
        )
        with self.begin() as conn:
            return conn.execute(statement).rowcount

    # --- space ----------------------------------------------------------------------------------
    def free_pages(self) -> tuple[int, int, int]:
        """SQLite: (auto_vacuum mode, free pages, page size); (0, 0, 0) elsewhere."""
        if not self._store.url.startswith("sqlite"):
            return 0, 0, 0
        with self.read() as conn:
            mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
            size = conn.exec_driver_sql("PRAGMA page_size").scalar()
        return int(mode or 0), int(free or 0), int(size or 0)

    def release_pages(self, pages: int) -> None:
        """SQLite with incremental auto-vacuum: give up to `pages` free pages back to the disk, in
        one write transaction (each step of the pragma frees one page)."""
        with self.begin() as conn:
            sqlite = conn.connection.driver_connection
            for _ in range(pages):
                sqlite.execute("PRAGMA incremental_vacuum(1)")
