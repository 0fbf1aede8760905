"""Which fire a run started outside the daemon is: a manual run (a fresh key, and for a watch job
the files present now), a crontab line's scheduled minute, or an explicit instant."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runner.context import Fire
from runner.errors import RunnerError
from runner.models import Trigger, utcnow

if TYPE_CHECKING:
    from runner.settings import Settings, WatchSettings
    from runner.store import Store

CRON_LOOKBACK_S = 600.0  # how long after its minute a crontab line may start and still find it
CRON_LATE_S = 60.0  # a crontab line that starts later than this after its minute is marked late
CLAIM_BATCH = 500  # file versions claimed per transaction


def fire_of(
    settings: Settings,
    job: str,
    store: Callable[[], Store],
    *,
    from_cron: bool = False,
    fire_at: str | None = None,
    late: bool = False,
) -> Fire:
    """The Fire of a `runner run`: manual (a fresh key), a crontab line's minute (`from_cron`), or
    the explicit instant `fire_at` (cron if `from_cron`, else schedule). `store` is called only
    when a manual run of a watch job claims its files."""
    if not fire_at and not from_cron:  # the common manual case: import nothing more
        key = f"manual:{uuid.uuid4().hex}"
        section = settings.jobs.get(job)
        if section is not None and section.watch is not None:
            return Fire(
                kind=Trigger.MANUAL, key=key, paths=claim_present_files(store(), job, key, section.watch)
            )
        return Fire(kind=Trigger.MANUAL, key=key)
    from runner.triggers import fire_key

    if fire_at:
        at = _instant(fire_at)
        return Fire(Trigger.CRON if from_cron else Trigger.SCHEDULE, fire_key(at), at, late=late)
    at, now = cron_fire(settings, job)
    return Fire(Trigger.CRON, fire_key(at), at, late=late or (now - at).total_seconds() > CRON_LATE_S)


def cron_fire(settings: Settings, job: str) -> tuple[datetime, datetime]:
    """The cron fire a crontab line started now belongs to (the newest one at most
    CRON_LOOKBACK_S ago), and now."""
    from runner.catchup import latest_fire
    from runner.triggers import CronSchedule

    section = settings.jobs.get(job)
    crons = tuple(s for s in (section.schedules if section else ()) if isinstance(s, CronSchedule))
    if not crons:
        raise RunnerError(
            f"job {job} has no cron schedule; --from-cron is for lines that `runner crontab install` wrote"
        )
    now = utcnow()
    at = latest_fire(crons, now, CRON_LOOKBACK_S)
    if at is None:
        raise RunnerError(
            f"job {job}: no cron fire in the last {CRON_LOOKBACK_S:.0f}s; "
            "is the crontab out of date? run `runner crontab install`"
        )
    return at, now


def _instant(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RunnerError(f"--fire-at {text!r}: expected an ISO instant like 2026-12-01T07:00:00Z") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def claim_present_files(store: Store, job: str, key: str, watch: WatchSettings) -> tuple[Path, ...]:
    """A manual run of a watch job takes every file in its folders that no run has claimed."""
    from runner.watch import check_folders, scan

    problem = check_folders(watch)
    if problem:
        raise RunnerError(f"job {job}: {problem}")
    store.files.release_orphans(job)
    versions = [(v.path, v.size, v.mtime_ns) for v in scan(watch)]
    claimed: list[str] = []
    for start in range(0, len(versions), CLAIM_BATCH):
        claimed += store.files.claim(job, key, versions[start : start + CLAIM_BATCH])
    return tuple(Path(p) for p in claimed)
