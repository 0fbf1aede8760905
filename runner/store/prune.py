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
# An id list is padded to one of these lengths: every length is another statement for SQLite to
# prepare and cache (the sqlite3 module keeps 128 per connection, each the size of its list),
# which made a prune's memory grow with the history.
ID_LIST_SIZES = (16, 64, 256, 1024, 4096, 16384)
_OTHER = runs.alias("other_attempt")


@dataclass(frozen=True, slots=True)
class Protected:
    """What no retention setting removes, read once before a prune: runs by id, and fires."""

    run_ids: frozenset[int]
    active_ids: frozenset[int]  # queued or running: their logs are being written
    fires: frozenset[tuple[str, str]]  # (job, fire key) with live file claims


@dataclass(frozen=True, slots=True)
class Limit:
    """One job's limits as rows: its runs up to `upto_id` are over the count, those queued before
    `older_than` over the age (None: no such limit)."""

    upto_id: int | None
    older_than: datetime | None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A run retention may remove: `over` says whether it is beyond its job's count or age."""

    id: int
    group: int  # the fire's first attempt
    job: str
    attempt: int
    fire_key: str
    status: str
    reason: str | None
    log_path: str | None
    over: bool


def _ids(ids: list[int]) -> list[int]:
    """`ids` padded with its last id to the next of ID_LIST_SIZES (a repeat changes no IN)."""
    size = next((n for n in ID_LIST_SIZES if n >= len(ids)), len(ids))
    return ids + ids[-1:] * (size - len(ids))


def over_limits(limits: dict[str, Limit]) -> sa.ColumnElement[bool]:
    """Whether a run is over its job's limits: one CASE on the job (not an OR of per-job terms,
    which SQLite would answer from the job index and sort, instead of walking ids in order)."""
    whens = []
    for job, limit in limits.items():
        terms = []
        if limit.upto_id is not None:
            terms.append(runs.c.id <= limit.upto_id)
        if limit.older_than is not None:
            terms.append(runs.c.queued_at < limit.older_than)
        if terms:
            whens.append((runs.c.job == job, sa.or_(*terms)))
    return sa.case(*whens, else_=sa.false()) if whens else sa.false()


def _candidates(
    conn: sa.Connection, where: sa.ColumnElement[bool], over: sa.ColumnElement[bool], limit: int | None = None
) -> list[Candidate]:
    # No datetime columns: reading them back would cost more than the rest of a batch.
    query = sa.select(
        runs.c.id,
        runs.c.first_run_id,
        runs.c.job,
        runs.c.attempt,
        runs.c.fire_key,
        runs.c.status,
        runs.c.reason,
        runs.c.log_path,
        over.label("over"),
    ).where(where)
    return [
        Candidate(
            r.id,
            r.first_run_id or r.id,
            r.job,
            r.attempt,
            r.fire_key,
            r.status,
            r.reason,
            r.log_path,
            bool(r.over),
        )
        for r in conn.execute(query.order_by(runs.c.id).limit(limit))
    ]


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

    def candidates(self, over: sa.ColumnElement[bool], *, after: int, limit: int) -> list[Candidate]:
        """Runs after id `after`, oldest first, over their job's limits (`over_limits`); at most
        `limit`. All jobs at once, in id order: the runs of jobs that fire together are
        interleaved, and deleting neighbours touches far fewer pages than one job after another."""
        with self.read() as conn:
            return _candidates(conn, (runs.c.id > after) & over, sa.true(), limit=limit)

    def other_attempts(self, batch: list[Candidate], over: sa.ColumnElement[bool]) -> list[Candidate]:
        """The attempts of the batch's fires that are not in the batch: retries of its first
        attempts, and first attempts (and their retries) of its retries."""
        mine = {run.id for run in batch}
        firsts = [run.id for run in batch if run.attempt == 1]
        groups = sorted({run.group for run in batch if run.group not in mine})
        found: list[Candidate] = []
        with self.read() as conn:
            if firsts:
                found += _candidates(conn, runs.c.first_run_id.in_(_ids(firsts)) & (runs.c.attempt > 1), over)
            if groups:
                found += _candidates(
                    conn, runs.c.id.in_(_ids(groups)) | runs.c.first_run_id.in_(_ids(groups)), over
                )
        return [run for run in found if run.id not in mine]

    def existing(self, ids: list[int]) -> list[int]:
        """Which of these runs are still in the history."""
        with self.read() as conn:
            return list(conn.execute(sa.select(runs.c.id).where(runs.c.id.in_(_ids(ids)))).scalars())

    def started_at(self, ids: list[int]) -> dict[int, datetime]:
        """When these runs started (for the few whose row names no log file)."""
        with self.read() as conn:
            rows = conn.execute(sa.select(runs.c.id, runs.c.started_at).where(runs.c.id.in_(_ids(ids))))
            return {run_id: at for run_id, at in rows if at is not None}

    def delete(self, ids: list[int]) -> int:
        """Remove these runs in one short write transaction. Checked again inside it: a run that
        became active since it was read stays, and so does every attempt of its fire."""
        if not ids:
            return 0
        # The fire's first attempt (a first attempt's first_run_id is NULL) and its retries, in
        # two lookups: PostgreSQL hashes each, where one with OR compares every run of the batch
        # with every active run.
        fire = sa.func.coalesce(runs.c.first_run_id, runs.c.id)
        statement = sa.delete(runs).where(
            runs.c.id.in_(_ids(ids)),
            runs.c.status.not_in(ACTIVE_STATUSES),
            ~sa.exists().where(_OTHER.c.id == fire, _OTHER.c.status.in_(ACTIVE_STATUSES)),
            ~sa.exists().where(_OTHER.c.first_run_id == fire, _OTHER.c.status.in_(ACTIVE_STATUSES)),
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
