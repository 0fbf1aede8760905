"""Totals over the whole run history, for metrics: runs by job and status, their durations in
buckets, each job's last success, file claims by state. Grouped in SQL, so every host and every
process reading one database reports the same figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from runner.models import ACTIVE_STATUSES, RunStatus, file_claims, runs
from runner.store.base import StorePart
from runner.store.records import as_utc


@dataclass(frozen=True, slots=True)
class Durations:
    """One job's finished runs: how many took at most each bucket's seconds (cumulative, as
    Prometheus histograms count), how many in all, and their seconds summed."""

    buckets: tuple[int, ...]
    count: int
    sum_s: float


class RunTotals(StorePart):
    """`store.totals`: read-only aggregates of the runs and file claims tables."""

    __slots__ = ()

    def runs(self) -> dict[tuple[str, str], int]:
        """Runs that ended (skipped fires included) per (job, status); queued and running ones
        are counted when they end."""
        query = (
            sa.select(runs.c.job, runs.c.status, sa.func.count())
            .where(runs.c.status.not_in(list(ACTIVE_STATUSES)))
            .group_by(runs.c.job, runs.c.status)
        )
        with self.read() as conn:
            return {(job, status): count for job, status, count in conn.execute(query)}

    def durations(self, bounds_s: Sequence[float]) -> dict[str, Durations]:
        """Per job, the durations of runs that started and ended, counted under each bound."""
        with self.read() as conn:
            seconds = _seconds_between(conn.dialect.name, runs.c.started_at, runs.c.ended_at)
            columns = [sa.func.sum(sa.case((seconds <= bound, 1), else_=0)) for bound in bounds_s]
            query = (
                sa.select(runs.c.job, sa.func.count(), sa.func.sum(seconds), *columns)
                .where(
                    runs.c.started_at.is_not(None),
                    runs.c.ended_at.is_not(None),
                    runs.c.status.not_in([*ACTIVE_STATUSES, RunStatus.SKIPPED]),
                )
                .group_by(runs.c.job)
            )
            return {
                job: Durations(tuple(int(n or 0) for n in under), count, max(0.0, float(total or 0)))
                for job, count, total, *under in conn.execute(query)
            }

    def last_success(self) -> dict[str, datetime]:
        """Per job, when its newest successful run ended (UTC)."""
        query = (
            sa.select(runs.c.job, sa.func.max(runs.c.ended_at))
            .where(runs.c.status == RunStatus.SUCCEEDED)
            .group_by(runs.c.job)
        )
        with self.read() as conn:
            return {job: as_utc(at) for job, at in conn.execute(query) if at is not None}

    def file_claims(self) -> dict[tuple[str, str], int]:
        """File versions per (job, claim state)."""
        query = sa.select(file_claims.c.job, file_claims.c.state, sa.func.count()).group_by(
            file_claims.c.job, file_claims.c.state
        )
        with self.read() as conn:
            return {(job, state): count for job, state, count in conn.execute(query)}


def _seconds_between(dialect: str, start: sa.ColumnElement, end: sa.ColumnElement) -> sa.ColumnElement:
    if dialect == "postgresql":
        return sa.extract("epoch", end - start)
    # SQLite keeps the UTC times as text; julianday() reads them to the microsecond.
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0
