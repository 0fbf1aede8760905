"""The daemon's fire queue: due fires wait here, not in a worker, until a worker is free.

Each job has one small backlog. Fires of `overlap = queue` jobs wait in fire order, at most
`max_queue` of them, and start one at a time; any other job keeps only its newest waiting fire
(the older one is recorded `coalesced`), and a `skip` job's fire that comes while its previous run
still runs is recorded `overlap`. A jittered fire waits out its delay here too. When a worker is
free, the job that has waited longest goes first, so a busy job cannot starve the others. Every
fire that does not run leaves a `skipped` row with its reason, and `snapshot()` says what waits.
While the database is away (`hold()`), nothing is handed out: each job's fires are kept as the
oldest one due, for the daemon's catch-up when it is back (`release()`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runner.context import Fire
from runner.messages import NOT_CLAIMED
from runner.models import SkipReason, utcnow
from runner.triggers import fire_key

log = logging.getLogger("runner.daemon")

IDLE_WAIT_S = 1.0  # the hand-out loop also wakes this often, to notice a reload's new max_workers


@dataclass(slots=True)
class _Waiting:
    fire: Fire
    due: datetime  # UTC: scheduled time plus the jitter delay
    since: datetime  # UTC: since when this job waits (the oldest due time a coalesced fire replaced)


@dataclass(slots=True)
class _JobLine:
    waiting: deque[_Waiting] = field(default_factory=deque)
    running: int = 0
    running_key: str | None = None
    last_start: float = 0.0  # monotonic: of two jobs waiting since the same moment, the one that
    # started least recently goes first


@dataclass(frozen=True, slots=True)
class Skip:
    job: str
    fire: Fire
    reason: SkipReason
    error: str


class Dispatcher:
    """Holds due fires until a worker is free; `send(job, fire)` hands one to a worker and returns
    a future that completes when its run ends. `record(skips)` writes the rows of fires not run;
    `unclaimed()` is told when a worker could not claim a fire (the database may be away)."""

    def __init__(
        self,
        settings: Any,
        policies: dict[str, str],
        send: Callable[[str, Fire], Any],
        busy: Callable[[], int],
        record: Callable[[list[Skip]], None],
        unclaimed: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.policies = policies  # job -> skip | queue | allow (decorator default + INI)
        self._send = send
        self._busy = busy  # fires in flight in the workers (file events included)
        self._record = record
        self._unclaimed = unclaimed
        self._holding = False  # the database is away: hand nothing out
        self._held: dict[str, datetime] = {}  # per job: its oldest fire the database could not take
        self._cond = threading.Condition()
        self._lines: dict[str, _JobLine] = {}
        self._delayed: list[tuple[float, int, str, _Waiting]] = []
        self._seq = itertools.count()
        self._skips: list[Skip] = []
        self._closed = False
        self._events = 0  # counts notifications, so none is lost while `busy` is asked unlocked
        self.changed = False  # something started or stopped waiting since the last snapshot
        self.last_seen: dict[str, datetime] = {}  # per job: the newest scheduled time handed to us
        self._thread = threading.Thread(target=self._loop, name="dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- fires in --
    def submit(self, job: str, fire: Fire, *, jitter_s: float | None = None) -> None:
        """A due fire. It waits out a jitter delay (no worker taken), then joins its job's line."""
        settings = self.settings.jobs.get(job)
        if settings is None:
            return
        delay = random.uniform(0, settings.jitter_s if jitter_s is None else jitter_s)
        due = (fire.scheduled_at or utcnow()) + timedelta(seconds=delay)
        waiting = _Waiting(fire, due, due)
        ready_at = time.monotonic() + delay
        with self._cond:
            if fire.scheduled_at is not None:
                self.last_seen[job] = max(self.last_seen.get(job, fire.scheduled_at), fire.scheduled_at)
            if self._closed:
                self._skips.append(Skip(job, fire, SkipReason.SHUTDOWN, "due while the daemon was stopping"))
            elif self._holding:
                self._keep(job, fire)
            elif delay > 0:
                heapq.heappush(self._delayed, (ready_at, next(self._seq), job, waiting))
            else:
                self._admit(job, waiting)
            self._events += 1
            self._cond.notify()

    def _admit(self, job: str, waiting: _Waiting) -> None:
        line = self._lines.setdefault(job, _JobLine())
        policy = self.policies.get(job, "skip")
        self.changed = True
        if policy == "queue":
            limit = self.settings.jobs[job].max_queue
            if len(line.waiting) >= limit:
                error = f"queue full: {limit} fire(s) of {job} were already waiting (max_queue = {limit})"
                self._skips.append(Skip(job, waiting.fire, SkipReason.QUEUE_FULL, error))
                return
            line.waiting.append(waiting)
            return
        if policy == "skip" and line.running:
            error = f"overlap: the fire of {line.running_key} was still running (overlap = skip)"
            self._skips.append(Skip(job, waiting.fire, SkipReason.OVERLAP, error))
            return
        if line.waiting:  # a backlog of one job is its newest fire
            older = line.waiting.popleft()
            error = f"coalesced: the newer fire {waiting.fire.key} was waiting too and ran instead"
            self._skips.append(Skip(job, older.fire, SkipReason.COALESCED, error))
            waiting.since = min(waiting.since, older.since)
        line.waiting.append(waiting)

    # -- fires out --
    def _loop(self) -> None:
        while True:
            # Asked outside our lock: the fork server's lock is held while it fails its futures,
            # whose callbacks take ours.
            with self._cond:
                seen = self._events
            busy = self._busy()
            with self._cond:
                if self._closed and not self._skips:
                    return
                self._ripen()
                picks = self._pick(busy)
                skips, self._skips = self._skips, []
                if not picks and not skips and self._events == seen:
                    wait = IDLE_WAIT_S
                    if self._delayed:
                        wait = min(wait, max(0.0, self._delayed[0][0] - time.monotonic()))
                    self._cond.wait(wait)
                    continue
            if skips:
                self._safe_record(skips)
            for job, waiting in picks:
                self._hand_out(job, waiting)

    def _ripen(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, job, waiting = heapq.heappop(self._delayed)
            if job in self.settings.jobs:
                self._admit(job, waiting)

    def _pick(self, busy: int) -> list[tuple[str, _Waiting]]:
        """Fires to start now: while workers are free, the eligible job that has waited longest."""
        free = 0 if self._holding else self.settings.runner.max_workers - busy
        picks = []
        while free > 0:
            ready = [
                (line.waiting[0].since, line.last_start, job)
                for job, line in self._lines.items()
                if line.waiting and (line.running == 0 or self.policies.get(job) == "allow")
            ]
            if not ready:
                break
            *_, job = min(ready)
            line = self._lines[job]
            waiting = line.waiting.popleft()
            if line.waiting:  # the queue's next fire waits from now on for its own turn
                line.waiting[0].since = max(line.waiting[0].since, utcnow())
            catchup_s = self.settings.jobs[job].catchup_s
            late_s = (utcnow() - waiting.due).total_seconds()
            if not waiting.fire.late and catchup_s and late_s > catchup_s:
                error = f"beyond catch-up: waited {late_s:.0f}s for a free worker (catchup = {catchup_s:g}s)"
                self._skips.append(Skip(job, waiting.fire, SkipReason.CATCHUP, error))
                continue
            line.running += 1
            line.running_key = waiting.fire.key
            line.last_start = time.monotonic()
            self.changed = True
            picks.append((job, waiting))
            free -= 1
        return picks

    def _hand_out(self, job: str, waiting: _Waiting) -> None:
        from dataclasses import replace

        try:
            future = self._send(job, replace(waiting.fire, due_at=waiting.due))
        except Exception:
            log.exception("job=%s fire=%s could not be handed to a worker", job, waiting.fire.key)
            self._done(job)
            return
        future.add_done_callback(lambda f: self._done(job, waiting.fire, f.result()))

    def _done(self, job: str, fire: Fire | None = None, code: int | None = None) -> None:
        unclaimed = code == NOT_CLAIMED and fire is not None
        with self._cond:
            line = self._lines.get(job)
            if line is not None and line.running:
                line.running -= 1
            if unclaimed:  # hand out nothing more until the daemon has looked at the database
                self._hold()
                self._keep(job, fire)
            self.changed = True
            self._events += 1
            self._cond.notify()
        if unclaimed:
            self._unclaimed()

    # -- the database away --
    def hold(self, held: dict[str, datetime] | None = None) -> None:
        """The database is away: hand nothing out. Every waiting fire, and each one due from now
        on, is kept (as its job's oldest fire due) for `release()`; so are `held` (job: oldest
        fire due), given back by a catch-up the database cut short."""
        with self._cond:
            self._hold()
            for job, at in (held or {}).items():
                self._held[job] = min(self._held.get(job, at), at)
            self._events += 1
            self._cond.notify()

    def _hold(self) -> None:
        if self._holding:
            return
        self._holding = True
        for job, line in self._lines.items():
            for waiting in line.waiting:
                self._keep(job, waiting.fire)
            line.waiting.clear()
        for _, _, job, waiting in self._delayed:
            self._keep(job, waiting.fire)
        self._delayed.clear()
        self.changed = True

    def _keep(self, job: str, fire: Fire) -> None:
        if fire.scheduled_at is not None:
            held = self._held.get(job)
            self._held[job] = fire.scheduled_at if held is None else min(held, fire.scheduled_at)

    def release(self) -> dict[str, datetime]:
        """The database is back: hand out again. Returns, per job, the oldest fire kept since
        `hold()`; the caller runs them by the catch-up rule (runner.catchup.plan)."""
        with self._cond:
            held, self._held, self._holding = self._held, {}, False
            self._events += 1
            self._cond.notify()
            return held

    @property
    def holding(self) -> bool:
        return self._holding

    def wake(self) -> None:
        with self._cond:
            self._events += 1
            self._cond.notify()

    def _safe_record(self, skips: list[Skip]) -> None:
        try:
            self._record(skips)
        except Exception as exc:  # the database may be restarting: log what could not be written
            log.warning("could not record %d skipped fire(s): %s", len(skips), exc)

    # -- reload, stop, status --
    def reload(self, settings: Any, policies: dict[str, str]) -> None:
        """New settings: waiting fires of schedules that no longer exist are dropped (recorded)."""
        with self._cond:
            old, self.settings, self.policies = self.settings, settings, policies
            gone = {
                job
                for job in {*self._lines, *(d[2] for d in self._delayed)}
                if job not in settings.jobs
                or not old.jobs.get(job)
                or settings.jobs[job].schedules != old.jobs[job].schedules
            }
            for job in gone:
                line = self._lines.get(job)
                for waiting in line.waiting if line else ():
                    self._skips.append(Skip(job, waiting.fire, SkipReason.RELOAD, _RELOAD_ERROR))
                if line:
                    line.waiting.clear()
            kept = []
            for item in self._delayed:
                if item[2] in gone:
                    self._skips.append(Skip(item[2], item[3].fire, SkipReason.RELOAD, _RELOAD_ERROR))
                else:
                    kept.append(item)
            heapq.heapify(kept)
            self._delayed = kept
            self.changed = True
            self._events += 1
            self._cond.notify()

    def close(self) -> None:
        """Stop handing out: every waiting or delayed fire is recorded skipped (shutdown)."""
        with self._cond:
            self._closed = True
            for job, line in self._lines.items():
                for waiting in line.waiting:
                    self._skips.append(Skip(job, waiting.fire, SkipReason.SHUTDOWN, _SHUTDOWN_ERROR))
                line.waiting.clear()
            for _, _, job, waiting in self._delayed:
                self._skips.append(Skip(job, waiting.fire, SkipReason.SHUTDOWN, _SHUTDOWN_ERROR))
            self._delayed.clear()
            self.changed = True
            self._events += 1
            self._cond.notify()
        self._thread.join(timeout=60)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per job with fires waiting: how many, and the oldest one's due time (UTC key)."""
        with self._cond:
            self.changed = False
            found: dict[str, dict[str, Any]] = {}
            waiting = [(job, w) for job, line in self._lines.items() for w in line.waiting]
            waiting += [(job, w) for _, _, job, w in self._delayed]
            for job, w in waiting:
                entry = found.setdefault(job, {"queued": 0, "oldest": w.due})
                entry["queued"] += 1
                entry["oldest"] = min(entry["oldest"], w.due)
            return {job: {"queued": e["queued"], "oldest": fire_key(e["oldest"])} for job, e in found.items()}


_RELOAD_ERROR = "reload: the job's schedule changed or was removed while this fire waited"
_SHUTDOWN_ERROR = "shutdown: the daemon stopped before this fire could start"
