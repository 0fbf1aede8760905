"""The daemon's account of fires no scheduler ran: caught up at start, retries a stop cut short,
fires that came due while it stopped (a mixin of runner.daemon.Daemon)."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from runner.context import Fire
from runner.messages import FireRequest
from runner.models import SkipReason, Trigger, utcnow
from runner.triggers import fire_key

if TYPE_CHECKING:
    from datetime import datetime

    from runner.catchup import CatchupPlan

log = logging.getLogger("runner.daemon")


class MissedFires:
    """Uses the daemon's settings, store, dispatcher, fork server and scheduled job names."""

    settings: Any
    store: Any
    dispatcher: Any
    server: Any
    config_path: Any
    retries: dict[str, int]
    _send: Any
    started_at: datetime
    caught_up_to: datetime

    def _scheduled_names(self) -> list[str]:
        return sorted(name for name, job in self.settings.jobs.items() if job.scheduled)

    def _catch_up(self) -> None:
        """Fires missed while no daemon ran (see runner.catchup.plan): the newest one of each job
        runs once, marked late, if it is within the job's catchup window; every other miss gets a
        `skipped` row.

        A job's misses count from its last recorded fire; a job with none yet (new in the config)
        counts from when a scheduler last ran or the config file changed, whichever is later."""
        from runner.catchup import known_since, plan

        now = utcnow()
        last = self.store.last_scheduled()
        since = known_since(self.config_path, self.store.daemons.last_beat())
        self.caught_up_to = now
        missed: list[tuple[str, str]] = []
        for name in self._scheduled_names():
            planned = plan(
                self.settings.jobs[name], last.get(name) or since, now, Trigger.SCHEDULE, self.started_at
            )
            if planned is not None:
                self._apply_plan(name, planned)
                if planned.downtime and self.settings.jobs[name].alerts is not None:
                    missed.append((name, planned.downtime))
        if missed:
            self._notify_missed(missed)

    def _notify_missed(self, missed: list[tuple[str, str]]) -> None:
        """Tell the jobs' notify channels, in a thread: a slow mail server must not hold the start."""
        import threading

        from runner.notify import notify_missed

        def send() -> None:
            for name, what in missed:
                try:
                    notify_missed(self.store, name, self.settings.jobs[name].alerts, what)
                except Exception:
                    log.exception("job=%s: notifying the missed fires failed", name)

        threading.Thread(target=send, name="notify-missed", daemon=True).start()

    def _apply_plan(self, name: str, planned: CatchupPlan) -> None:
        """Log the downtime, record the skipped fires, submit the one that still runs."""
        if planned.downtime:
            log.warning("job=%s %s", name, planned.downtime)
        for skip in planned.skipped:
            self.store.record_skipped(name, planned.fire.kind, [(skip.key, skip.at)], skip.reason, skip.error)
        if planned.runnable:
            self.dispatcher.submit(name, planned.fire, jitter_s=0.0)

    def _resume_retries(self) -> None:
        """Retries a stop cut short (they never started): each runs now if still within catchup."""
        now = utcnow()
        for record in self.store.stopped_retries():
            job = self.settings.jobs.get(record.job)
            if job is None or not job.catchup_s or (now - record.queued_at).total_seconds() > job.catchup_s:
                continue
            if not self.store.take_stopped_retry(record.id, f"resumed by daemon started at {now:%H:%M:%S}Z"):
                continue  # another daemon took it
            log.warning(
                "job=%s run=%s: resuming retry %d that a stop cut short",
                record.job,
                record.id,
                record.attempt,
            )
            fire = Fire(record.trigger, record.fire_key, record.scheduled_at, late=True)
            self.server.submit(FireRequest(record.job, fire, resume=record.id))

    def _retry_lost(self) -> None:
        """Lost runs (their host or supervisor died) of jobs with retries left: one daemon takes
        each retry (the database decides which) and runs it now, within the job's catchup."""
        jobs = {
            name: (self.retries[name], job.catchup_s)
            for name, job in self.settings.jobs.items()
            if self.retries.get(name) and job.catchup_s
        }
        for record in self.store.retry_lost(jobs):
            log.warning(
                "job=%s fire=%s: run %s is retry %d of a lost run",
                record.job,
                record.fire_key,
                record.id,
                record.attempt - 1,
            )
            fire = Fire(record.trigger, record.fire_key, record.scheduled_at, late=True)
            self._send(FireRequest(record.job, fire, resume=record.id))

    def _notify_lost(self, lost: list[int]) -> None:
        """Lost runs that no retry follows (no retries left, not a scheduled fire, or no
        catchup to retry within): their jobs' channels are told, from a thread of their own so
        that a slow channel never holds up the heartbeat. This daemon marked them, so it alone
        tells."""
        from runner.notify import notify_lost

        told = []
        for run_id in lost:
            record = self.store.get_run(run_id)
            job = self.settings.jobs.get(record.job) if record is not None else None
            if record is None or job is None or job.alerts is None or not job.alerts.channels:
                continue
            retries = self.retries.get(record.job, 0)
            if record.trigger == Trigger.SCHEDULE and record.attempt <= retries and job.catchup_s:
                continue  # _retry_lost takes it up: the retry's outcome is told
            told.append((record, job.alerts, retries))
        if told:
            threading.Thread(
                target=lambda: [notify_lost(self.store, *each) for each in told],
                name="notify-lost",
                daemon=True,
            ).start()

    def _record_unscheduled(self) -> None:
        """Fires that came due after the scheduler stopped, while running jobs finished."""
        from runner.catchup import missed_fires

        now = utcnow()
        error = "shutdown: due while the daemon was stopping"
        for name in self._scheduled_names():
            after = self.dispatcher.last_seen.get(name)
            if after is None:
                continue
            fires = [(fire_key(at), at) for at in missed_fires(self.settings.jobs[name], after, now)]
            with contextlib.suppress(Exception):
                self.store.record_skipped(name, Trigger.SCHEDULE.value, fires, SkipReason.SHUTDOWN, error)
