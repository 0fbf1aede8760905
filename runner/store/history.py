"""The run history's queries: one run, a fire's first attempt, the newest runs, what is active,
what went wrong, and what the daemon's catch-up and `runner status` need to know."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from runner.models import ACTIVE_STATUSES, RunStatus, SkipReason, runs
from runner.store.records import RunRecord, as_utc, record_of

if TYPE_CHECKING:
    from runner.store.database import Store

# What `runner status` lists as problems: every way a run (or a due fire) did not succeed.
PROBLEM_STATUSES = (
    RunStatus.FAILED,
    RunStatus.TIMED_OUT,
    RunStatus.KILLED,
    RunStatus.LOST,
    RunStatus.SKIPPED,
)


class HistoryQueries:
    """The half of `Store` that reads runs (`store.history(...)`, `store.get_run(...)`); writing
    them is the other half (runner/store/runs.py)."""

    def get_run(self: Store, run_id: int) -> RunRecord | None:
        with self.read() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        return record_of(row) if row else None

    def find_fire(self: Store, job: str, fire_key: str) -> RunRecord | None:
        with self.read() as conn:
            row = conn.execute(
                sa.select(runs).where(runs.c.job == job, runs.c.fire_key == fire_key, runs.c.attempt == 1)
            ).first()
        return record_of(row) if row else None

    def history(
        self: Store, job: str | None = None, status: str | None = None, limit: int = 20
    ) -> list[RunRecord]:
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        if job:
            query = query.where(runs.c.job == job)
        if status:
            query = query.where(runs.c.status == status)
        with self.read() as conn:
            return [record_of(row) for row in conn.execute(query)]

    def active_runs(self: Store) -> list[RunRecord]:
        with self.read() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.status.in_(ACTIVE_STATUSES)).order_by(runs.c.id))
            return [record_of(row) for row in rows]

    def problems(self: Store, limit: int = 10) -> list[RunRecord]:
        """The newest runs that did not succeed (including recorded missed fires)."""
        bad = [status.value for status in PROBLEM_STATUSES]
        query = sa.select(runs).where(runs.c.status.in_(bad)).order_by(runs.c.id.desc()).limit(limit)
        with self.read() as conn:
            return [record_of(row) for row in conn.execute(query)]

    def last_scheduled(self: Store) -> dict[str, datetime]:
        """Per job, the newest scheduled instant any run (or recorded miss) was for."""
        query = (
            sa.select(runs.c.job, sa.func.max(runs.c.scheduled_at))
            .where(runs.c.scheduled_at.is_not(None))
            .group_by(runs.c.job)
        )
        with self.read() as conn:
            return {job: as_utc(at) for job, at in conn.execute(query) if at is not None}

    def skipped_since(self: Store, since: datetime) -> dict[str, dict[str, int]]:
        """Per job, how many fires were recorded skipped since `since`, by reason."""
        query = (
            sa.select(runs.c.job, runs.c.reason, sa.func.count())
            .where(runs.c.status == RunStatus.SKIPPED.value, runs.c.queued_at >= since)
            .group_by(runs.c.job, runs.c.reason)
        )
        found: dict[str, dict[str, int]] = {}
        with self.begin() as conn:
            for job, reason, count in conn.execute(query):
                found.setdefault(job, {})[reason or "other"] = count
        return found

    def stopped_retries(self: Store) -> list[RunRecord]:
        """Retries a stop cut short before they started, not yet taken up again."""
        query = sa.select(runs).where(
            runs.c.reason == SkipReason.RETRY_STOPPED.value, runs.c.status == RunStatus.KILLED.value
        )
        with self.begin() as conn:
            return [record_of(row) for row in conn.execute(query.order_by(runs.c.id))]
