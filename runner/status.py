"""What `runner status` reports: live daemons, their queues, runs in progress, next and missed
fires, watched folders and recent problems, read in one go (the CLI only formats it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from runner.catchup import find_missed, known_since, next_fire
from runner.enums import RunStatus
from runner.models import utcnow
from runner.triggers import fire_key

if TYPE_CHECKING:
    from runner.settings import Settings
    from runner.store import RunRecord, Store

MAX_PROBLEMS = 10  # recent runs that did not succeed
SKIPPED_WINDOW_S = 3600.0  # skipped fires are counted over the last hour
UNDELIVERED_WINDOW_S = 86400.0  # notifications and pings that failed are listed for a day
MAX_UNDELIVERED = 10
MISSED_SETTLE_S = 60.0  # on top of a heartbeat: how old an unclaimed fire is before it counts as missed


@dataclass(frozen=True, slots=True)
class JobQueue:
    """Fires of one job waiting in live daemons, and fires skipped in the last hour by reason."""

    job: str
    queued: int
    oldest_queued_age_s: float | None
    skipped_last_hour: dict[str, int]


@dataclass(frozen=True, slots=True)
class NextFire:
    job: str
    at: datetime | None  # UTC; None: the schedule has no more fires


@dataclass(frozen=True, slots=True)
class MissedFires:
    """Fires of a job that no scheduler ran (or recorded): the newest one and how many."""

    job: str
    latest: datetime  # UTC
    count: int


@dataclass(frozen=True, slots=True)
class WatchedJob:
    job: str
    folders: tuple[str, ...]
    files: dict[str, int]  # file versions by claim state


@dataclass(frozen=True, slots=True)
class StatusReport:
    now: datetime
    daemons: list[dict[str, Any]]  # live daemons' rows, newest first (see Daemons.alive)
    queues: list[JobQueue]
    running: list[RunRecord]
    upcoming: list[NextFire]
    missed: list[MissedFires]
    watching: list[WatchedJob]
    problems: list[RunRecord]
    undelivered: list[dict[str, Any]] = field(default_factory=list)  # failed notices (store.notices)

    def heartbeat_age_s(self, daemon: dict[str, Any]) -> float:
        """On the database's clock (this host's may be off)."""
        return daemon["heartbeat_age_s"]

    def to_json(self) -> dict[str, Any]:
        """The `runner status --json` document (its keys and shapes are a public interface)."""
        return {
            "daemons": [{**d, "heartbeat_age_s": self.heartbeat_age_s(d)} for d in self.daemons],
            "jobs": [
                {
                    "job": q.job,
                    "queued": q.queued,
                    "oldest_queued_age_s": q.oldest_queued_age_s,
                    "skipped_last_hour": q.skipped_last_hour,
                }
                for q in self.queues
            ],
            RunStatus.RUNNING: [r.to_json() for r in self.running],
            "next": [{"job": u.job, "next_fire": fire_key(u.at) if u.at else None} for u in self.upcoming],
            "missed": [{"job": m.job, "latest": fire_key(m.latest), "count": m.count} for m in self.missed],
            "watching": [{"job": w.job, "folders": list(w.folders), "files": w.files} for w in self.watching],
            "problems": [r.to_json() for r in self.problems],
            "undelivered": [{**n, "created_at": fire_key(n["created_at"])} for n in self.undelivered],
        }


def status_report(settings: Settings, store: Store) -> StatusReport:
    """Read everything `runner status` shows (run it on a reaped store: lost runs marked)."""
    now = utcnow()
    alive = store.daemons.alive(settings.runner.stale_after_s)
    running = store.active_runs()
    upcoming, missed = _fires(settings, store, now)
    watching = [
        WatchedJob(name, tuple(str(f) for f in job.watch.folders), store.files.counts(name))
        for name, job in sorted(settings.jobs.items())
        if job.watch is not None
    ]
    skipped = store.skipped_since(now - timedelta(seconds=SKIPPED_WINDOW_S))
    return StatusReport(
        now=now,
        daemons=alive,
        queues=job_queues(settings, alive, skipped, now),
        running=running,
        upcoming=upcoming,
        missed=missed,
        watching=watching,
        problems=store.problems(MAX_PROBLEMS),
        undelivered=store.notices.failures_since(
            now - timedelta(seconds=UNDELIVERED_WINDOW_S), MAX_UNDELIVERED
        ),
    )


def _fires(settings: Settings, store: Store, now: datetime) -> tuple[list[NextFire], list[MissedFires]]:
    """Each scheduled job's next fire, and the fires nobody ran since its last recorded one."""
    last = store.last_scheduled()
    since = known_since(settings.path, store.daemons.last_beat())
    # A fire is missed once it is a heartbeat-and-a-bit old and nobody has claimed it.
    settled = now - timedelta(seconds=settings.runner.heartbeat_s + MISSED_SETTLE_S)
    upcoming, missed = [], []
    for name, job in sorted(settings.jobs.items()):
        if not job.scheduled:
            continue
        upcoming.append(NextFire(name, next_fire(job.schedules, now)))
        gap = find_missed(job, last.get(name) or since, settled)
        if gap:
            missed.append(MissedFires(name, gap.latest, gap.count))
    return upcoming, missed


def job_queues(
    settings: Settings, alive: list[dict[str, Any]], skipped: dict[str, dict[str, int]], now: datetime
) -> list[JobQueue]:
    """Per job that has any: fires waiting in live daemons (how many, the oldest one's age) and
    fires skipped in the last hour, by reason."""
    waiting: dict[str, dict[str, Any]] = {}
    for d in alive:
        for job, q in (d.get("queues") or {}).items():
            entry = waiting.setdefault(job, {"queued": 0, "oldest": None})
            entry["queued"] += q["queued"]
            oldest = datetime.fromisoformat(q["oldest"].replace("Z", "+00:00"))
            entry["oldest"] = min(entry["oldest"] or oldest, oldest)
    rows = []
    for job in sorted({*waiting, *skipped} & {*settings.jobs, *skipped}):
        entry = waiting.get(job, {"queued": 0, "oldest": None})
        age = max(0.0, (now - entry["oldest"]).total_seconds()) if entry["oldest"] else None
        rows.append(JobQueue(job, entry["queued"], age, skipped.get(job, {})))
    return rows
