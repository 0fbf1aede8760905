"""Totals over the whole run history, for metrics: runs by job and status with their durations in
buckets and their last end, and file claims by state. Every host and process reading one
database reports the same figures.

A scrape must not read a long history whole (a million runs took 25 s), so runs that can no
longer change are folded into `run_totals` once, below a watermark (`run_totals_mark`): a run
below the oldest one still queued or running, and queued more than SETTLE_S ago (on PostgreSQL
an id is taken before its row commits, so a fresh id below the newest visible one may still
appear). Each read adds the runs above the watermark to the folded totals and moves the
watermark when it can, without waiting for another writer. A folded run keeps the status it was
counted with, so the counters never go down, even when old runs are deleted from the history."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from runner.errors import RunnerError
from runner.models import ACTIVE_STATUSES, SkipReason, file_claims, run_totals, run_totals_mark, runs, utcnow
from runner.store.base import StorePart
from runner.store.engine import dialect_insert
from runner.store.queue import WouldWait
from runner.store.records import as_utc

SETTLE_S = 600.0  # a run queued this long ago is never still being inserted: it may be folded
MARK_ID = 1


@dataclass(frozen=True, slots=True)
class Tally:
    """The runs of one (job, status): how many, how many have a duration, their seconds summed,
    how many took at most each bound (cumulative, as Prometheus histograms count), the last end."""

    runs: int
    timed: int
    seconds: float
    buckets: tuple[int, ...]
    last_ended_at: datetime | None

    def plus(self, other: Tally) -> Tally:
        ends = [at for at in (self.last_ended_at, other.last_ended_at) if at is not None]
        return Tally(
            self.runs + other.runs,
            self.timed + other.timed,
            self.seconds + other.seconds,
            tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
            max(ends) if ends else None,
        )


Tallies = dict[tuple[str, str], Tally]


class RunTotals(StorePart):
    """`store.totals`: what metrics report, from the folded totals and the runs after them."""

    __slots__ = ()

    def tallies(self, bounds_s: Sequence[float], *, resumable_s: float = 0.0) -> Tallies:
        """Per (job, status), every run that ended (skipped fires included); queued and running
        ones count when they end. A retry a stop cut short less than `resumable_s` ago (the
        longest catchup) may still be taken up again in its row, so it is not folded yet."""
        bounds = [float(b) for b in bounds_s]
        with self.read() as conn:
            stored, through, folded = _folded(conn, bounds)
            settle_to = _settle_to(conn, through, resumable_s)
            newly = _tally(conn, bounds, after=through, upto=settle_to)
            fresh = _tally(conn, bounds, after=settle_to, upto=None)
        if settle_to > through:
            self._fold(stored, settle_to, _merge(folded, newly), bounds)
        return _merge(_merge(folded, newly), fresh)

    def _fold(self, stored: int | None, settle_to: int, totals: Tallies, bounds: list[float]) -> None:
        """Move the watermark from `stored` (None: there is none yet) and store the totals below
        it, if nobody else moved it meanwhile and no other writer holds the database now (the
        next read tries again)."""
        values = {"through_id": settle_to, "bounds": bounds, "updated_at": utcnow()}
        try:
            with self._store._begin_now() as conn:
                if stored is None:
                    insert = dialect_insert(conn.dialect.name)(run_totals_mark).values(id=MARK_ID, **values)
                    moved = conn.execute(insert.on_conflict_do_nothing().returning(run_totals_mark.c.id))
                else:
                    moved = conn.execute(
                        sa.update(run_totals_mark)
                        .where(run_totals_mark.c.id == MARK_ID, run_totals_mark.c.through_id == stored)
                        .values(**values)
                        .returning(run_totals_mark.c.id)
                    )
                if moved.first() is None:
                    raise _Raced
                conn.execute(sa.delete(run_totals))
                if totals:
                    conn.execute(sa.insert(run_totals), _rows(totals))
        except (_Raced, WouldWait, RunnerError):
            return

    def file_claims(self) -> dict[tuple[str, str], int]:
        """File versions per (job, claim state)."""
        query = sa.select(file_claims.c.job, file_claims.c.state, sa.func.count()).group_by(
            file_claims.c.job, file_claims.c.state
        )
        with self.read() as conn:
            return {(job, state): count for job, state, count in conn.execute(query)}


class _Raced(Exception):
    """Another process moved the watermark first: its totals stand, ours are dropped."""


def _folded(conn: sa.Connection, bounds: list[float]) -> tuple[int | None, int, Tallies]:
    """The stored watermark (None: none yet), the one to count from, and the totals below it;
    totals counted with other bounds are counted again from the start."""
    mark = conn.execute(sa.select(run_totals_mark).where(run_totals_mark.c.id == MARK_ID)).first()
    if mark is None:
        return None, 0, {}
    if [float(b) for b in mark.bounds] != bounds:
        return int(mark.through_id), 0, {}
    totals = {
        (row.job, row.status): Tally(
            row.runs,
            row.timed,
            row.seconds,
            tuple(int(n) for n in row.buckets),
            as_utc(row.last_ended_at) if row.last_ended_at else None,
        )
        for row in conn.execute(sa.select(run_totals))
    }
    return int(mark.through_id), int(mark.through_id), totals


def _settle_to(conn: sa.Connection, through: int, resumable_s: float) -> int:
    """The new watermark: below the oldest run still active (or still to be resumed), and only
    runs queued SETTLE_S ago."""
    now = utcnow()
    horizon = now - timedelta(seconds=SETTLE_S)
    resumable = sa.and_(
        runs.c.reason == SkipReason.RETRY_STOPPED,
        runs.c.queued_at >= now - timedelta(seconds=resumable_s),
    )
    oldest_active = conn.execute(
        sa.select(sa.func.min(runs.c.id)).where(sa.or_(runs.c.status.in_(list(ACTIVE_STATUSES)), resumable))
    ).scalar()
    newest_old = conn.execute(
        sa.select(sa.func.max(runs.c.id)).where(runs.c.id > through, runs.c.queued_at < horizon)
    ).scalar()
    candidate = newest_old or through
    if oldest_active is not None:
        candidate = min(candidate, oldest_active - 1)
    return max(through, candidate)


def _tally(conn: sa.Connection, bounds: list[float], *, after: int, upto: int | None) -> Tallies:
    """The runs that ended with after < id <= upto, per (job, status)."""
    if upto is not None and upto <= after:
        return {}
    seconds = _seconds_between(conn.dialect.name, runs.c.started_at, runs.c.ended_at)
    timed = sa.and_(runs.c.started_at.is_not(None), runs.c.ended_at.is_not(None))
    query = (
        sa.select(
            runs.c.job,
            runs.c.status,
            sa.func.count(),
            sa.func.sum(sa.case((timed, 1), else_=0)),
            sa.func.sum(sa.case((timed, seconds), else_=None)),
            sa.func.max(runs.c.ended_at),
            *(sa.func.sum(sa.case((sa.and_(timed, seconds <= bound), 1), else_=0)) for bound in bounds),
        )
        .where(runs.c.id > after, runs.c.status.not_in(list(ACTIVE_STATUSES)))
        .group_by(runs.c.job, runs.c.status)
    )
    if upto is not None:
        query = query.where(runs.c.id <= upto)
    return {
        (job, status): Tally(
            int(count),
            int(n_timed or 0),
            max(0.0, float(total or 0.0)),
            tuple(int(n or 0) for n in under),
            as_utc(ended) if isinstance(ended, datetime) else _parsed(ended),
        )
        for job, status, count, n_timed, total, ended, *under in conn.execute(query)
    }


def _parsed(value: object) -> datetime | None:
    """SQLite gives max() of a time column back as text."""
    if value is None:
        return None
    return as_utc(datetime.fromisoformat(str(value)))


def _merge(a: Tallies, b: Tallies) -> Tallies:
    merged = dict(a)
    for key, tally in b.items():
        merged[key] = merged[key].plus(tally) if key in merged else tally
    return merged


def _rows(totals: Tallies) -> Iterable[dict[str, object]]:
    return [
        {
            "job": job,
            "status": status,
            "runs": t.runs,
            "timed": t.timed,
            "seconds": t.seconds,
            "buckets": list(t.buckets),
            "last_ended_at": t.last_ended_at,
        }
        for (job, status), t in sorted(totals.items())
    ]


def _seconds_between(dialect: str, start: sa.ColumnElement, end: sa.ColumnElement) -> sa.ColumnElement:
    if dialect == "postgresql":
        return sa.extract("epoch", end - start)
    # SQLite keeps the UTC times as text; julianday() reads them to the microsecond.
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0
