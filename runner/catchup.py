"""Missed fires: which scheduled fires nobody ran (machine or daemon down) and which may still run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

from runner.context import Fire
from runner.durations import format_duration
from runner.models import SkipReason, Trigger
from runner.settings import JobSettings
from runner.triggers import Schedule, fire_key

MAX_COUNTED_MISSES = 10_000
MAX_MISS_ROWS = 1_000  # a long outage of a frequent job: its newest misses get a row each
NO_SCHEDULER = "while no scheduler ran"
DATABASE_AWAY = "while the database was unreachable"


@dataclass(frozen=True, slots=True)
class Missed:
    job: str
    latest: datetime  # UTC: the newest fire nobody ran; a catch-up runs this one, once
    count: int  # how many fires were missed in all (counting stops at MAX_COUNTED_MISSES)
    runnable: bool  # still within the job's catchup window

    def reason(self, catchup_s: float, cause: str = NO_SCHEDULER) -> str:
        more = f" and {self.count - 1} earlier" if self.count > 1 else ""
        when = self.latest.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        if self.runnable:
            return f"missed the fire of {when}{more} {cause}; running it late"
        window = format_duration(catchup_s) if catchup_s else "0 (never)"
        return f"missed the fire of {when}{more} {cause}; outside catchup = {window}"


@dataclass(frozen=True, slots=True)
class SkippedFire:
    """A missed fire that will not run, with the `skipped` row's reason and error."""

    key: str
    at: datetime  # UTC
    reason: SkipReason
    error: str


@dataclass(frozen=True, slots=True)
class CatchupPlan:
    """What to do about one job's missed fires: run `fire` (the newest) if `runnable`, record
    every one in `skipped`; `downtime` is the line to log when fires were missed while down."""

    job: str
    fire: Fire
    runnable: bool
    skipped: tuple[SkippedFire, ...]
    downtime: str | None


def plan(
    job: JobSettings,
    after: datetime,
    now: datetime,
    trigger: Trigger,
    started_at: datetime | None = None,
    cause: str = NO_SCHEDULER,
) -> CatchupPlan | None:
    """The catch-up of `job`'s fires in (after, now], fired as `trigger` (the kind its scheduler
    records for an on-time fire of the same schedule): the newest fire runs once, marked late,
    if it is within the job's catchup window; every older miss (and the newest, if it may not
    run) gets a `skipped` row, `coalesced` within the window and `beyond catch-up` outside it.

    Fires due at or after `started_at` (the scheduler's own start) are no downtime: when they are
    all that was missed, the newest runs as an ordinary fire. `cause` says why they were missed
    (in the skipped rows and the line to log). None: nothing was missed."""
    missed = find_missed(job, after, now)
    if missed is None:
        return None
    fires = missed_fires(job, after, now)
    newest = fires.pop() if fires and fires[-1] == missed.latest else missed.latest
    due = (*fires, newest)
    down = missed.count - (0 if started_at is None else sum(1 for at in due if at >= started_at))
    late = down > 0  # the newest fire stands in for fires nobody ran
    runnable = not late or missed.runnable
    skipped = [_skipped(job, at, newest, now, runnable, cause) for at in fires]
    if not runnable:
        skipped.append(
            SkippedFire(fire_key(newest), newest, SkipReason.CATCHUP, missed.reason(job.catchup_s, cause))
        )
    downtime = None
    if down:
        last_down = max((at for at in due if started_at is None or at < started_at), default=newest)
        downtime = _downtime(job, down, last_down, newest, runnable, cause)
    return CatchupPlan(
        job=job.name,
        fire=Fire(trigger, fire_key(newest), newest, late=late),
        runnable=runnable,
        skipped=tuple(skipped),
        downtime=downtime,
    )


def _skipped(
    job: JobSettings, at: datetime, newest: datetime, now: datetime, runnable: bool, cause: str
) -> SkippedFire:
    what = f"missed the fire of {at.astimezone():%Y-%m-%d %H:%M:%S} {cause}"
    if runnable and job.catchup_s and (now - at).total_seconds() <= job.catchup_s:
        return SkippedFire(
            fire_key(at), at, SkipReason.COALESCED, f"{what}; the newer fire {fire_key(newest)} ran instead"
        )
    return SkippedFire(fire_key(at), at, SkipReason.CATCHUP, f"{what}; outside catchup = {_window(job)}")


def _downtime(
    job: JobSettings, down: int, last_down: datetime, newest: datetime, runnable: bool, cause: str
) -> str:
    more = f" and {down - 1} earlier" if down > 1 else ""
    what = f"missed the fire of {last_down.astimezone():%Y-%m-%d %H:%M:%S}{more} {cause}"
    if runnable and newest != last_down:
        return f"{what}; running the newer fire {fire_key(newest)} late instead"
    if runnable:
        return f"{what}; running it late"
    return f"{what}; outside catchup = {_window(job)}"


def _window(job: JobSettings) -> str:
    return format_duration(job.catchup_s) if job.catchup_s else "0 (never)"


def next_fire(schedules: tuple[Schedule, ...], after: datetime) -> datetime | None:
    times = [t for s in schedules if (t := s.next_after(after)) is not None]
    return min(times) if times else None


def fires_between(schedules: tuple[Schedule, ...], after: datetime, until: datetime) -> list[datetime]:
    """Every fire in (after, until], in order, de-duplicated across schedules (capped)."""
    found: set[datetime] = set()
    for schedule in schedules:
        for fire in islice(schedule.fires_after(after), MAX_COUNTED_MISSES):
            if fire.at > until:
                break
            found.add(fire.at)
    return sorted(found)


def latest_fire(schedules: tuple[Schedule, ...], now: datetime, window_s: float) -> datetime | None:
    """The newest fire at or before `now`, looking back at most `window_s` (a cron line's own fire)."""
    fires = fires_between(schedules, now - timedelta(seconds=window_s), now)
    return fires[-1] if fires else None


def find_missed(job: JobSettings, last_recorded: datetime | None, now: datetime) -> Missed | None:
    """The fires of `job` after its last recorded fire that nobody ran, coalesced into one."""
    if not job.schedules or last_recorded is None:
        return None
    fires = fires_between(job.schedules, last_recorded, now)
    if not fires:
        return None
    latest = fires[-1]
    if len(fires) >= MAX_COUNTED_MISSES:  # counting stopped early: find the newest one from now back
        window_s = 3600.0
        while (found := latest_fire(job.schedules, now, window_s)) is None:
            window_s *= 24
        latest = max(latest, found)
    runnable = job.catchup_s > 0 and (now - latest).total_seconds() <= job.catchup_s
    return Missed(job.name, latest, len(fires), runnable)


def missed_fires(job: JobSettings, after: datetime, now: datetime) -> list[datetime]:
    """The fires of `job` in (after, now], in order: the newest MAX_MISS_ROWS of them."""
    fires = fires_between(job.schedules, after, now)
    if len(fires) >= MAX_COUNTED_MISSES:  # counting stopped early: list the newest from now back
        window_s = 3600.0
        while (
            len(fires := fires_between(job.schedules, now - timedelta(seconds=window_s), now))
            < (MAX_MISS_ROWS)
            and window_s < (now - after).total_seconds()
        ):
            window_s *= 24
    return fires[-MAX_MISS_ROWS:]


def known_since(config_path: Path, last_beat: datetime | None) -> datetime:
    """Since when the config's jobs were known to a scheduler: the file's last change or the last
    daemon heartbeat on this database, whichever is later. A job with no recorded fire yet (new
    in the config) counts its missed fires from then."""
    changed = datetime.fromtimestamp(config_path.stat().st_mtime, UTC)
    return max(changed, last_beat) if last_beat else changed
