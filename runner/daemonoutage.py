"""The daemon while its database is away (a mixin of runner.daemon.Daemon): hand out nothing,
probe with backoff, and when the database is back run what came due by the catch-up rule."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from runner.errors import StorageError
from runner.models import Trigger, utcnow
from runner.outage import Outage

log = logging.getLogger("runner.daemon")

MAX_UNRECORDED_SKIPS = 10_000  # skipped-fire groups kept for the database's return

# (job, trigger, reason, error) and its (fire key, scheduled time) pairs: one record_skipped call
SkipGroup = tuple[tuple[str, str, str, str], list[tuple[str, Any]]]


class DatabaseOutage:
    """Uses the daemon's settings, store, dispatcher, watches and catch-up (runner.daemonmissed)."""

    settings: Any
    store: Any
    dispatcher: Any
    watches: Any
    daemon_id: int | None
    notes: list[str]
    _wake: threading.Event

    def _init_outage(self) -> None:
        self.outage = Outage()
        self._unrecorded_lock = threading.Lock()
        self._unrecorded_skips: list[SkipGroup] = []
        self._unclaimed_files: list[tuple[str, str, list[str]]] = []  # (job, fire key, paths)

    def _on_unclaimed(self) -> None:
        """A worker could not claim a fire: look at the database now (the fire is kept)."""
        self.outage.suspect()
        self._wake.set()

    def _database_failed(self, exc: BaseException) -> None:
        self.outage.failed(exc)
        self.dispatcher.hold()

    def _probe(self) -> None:
        """Try the database with the daemon's heartbeat; when it works, catch up."""
        try:
            self.store.daemons.heartbeat(self.daemon_id, queues=self.dispatcher.snapshot(), notes=self.notes)
        except StorageError as exc:
            self._database_failed(exc)
            return
        self.outage.back()
        held = self.dispatcher.release()
        try:
            self._catch_up_held(held)
            self._record_skip_groups([])
            self._settle_unclaimed_files()
        except StorageError as exc:
            self._database_failed(exc)

    def _catch_up_held(self, held: dict[str, datetime]) -> None:
        """Fires that came due while the database was away, from each job's oldest: the newest
        runs once, late, if within the job's catchup window; the others get `skipped` rows."""
        from runner.catchup import DATABASE_AWAY, plan

        now = utcnow()
        for name in sorted(held):
            job = self.settings.jobs.get(name)
            if job is None or not job.scheduled:
                continue
            first = held[name] - timedelta(microseconds=1)
            try:
                planned = plan(job, first, now, Trigger.SCHEDULE, cause=DATABASE_AWAY)
                if planned is not None:
                    self._apply_plan(name, planned)
            except StorageError:
                self.dispatcher.hold({n: at for n, at in held.items() if n >= name})
                raise

    def _record_skip_groups(self, groups: list[SkipGroup]) -> None:
        """Write skipped-fire rows, and those kept while the database was away; what the
        database does not take now is kept for its return."""
        with self._unrecorded_lock:
            pending, self._unrecorded_skips = self._unrecorded_skips + groups, []
        for index, ((job, kind, reason, error), fires) in enumerate(pending):
            try:
                self.store.record_skipped(job, kind, fires, reason, error)
            except StorageError as exc:
                with self._unrecorded_lock:
                    kept = pending[index:] + self._unrecorded_skips
                    if len(kept) > MAX_UNRECORDED_SKIPS:
                        log.warning(
                            "the database is away: %d group(s) of skipped fires will not be recorded",
                            len(kept) - MAX_UNRECORDED_SKIPS,
                        )
                    self._unrecorded_skips = kept[-MAX_UNRECORDED_SKIPS:]
                self._database_failed(exc)
                return

    def _settle_unclaimed_files(self) -> None:
        """Files claimed for a run that the database then failed to start: claimable again."""
        while self._unclaimed_files:
            job, key, paths = self._unclaimed_files[0]
            self.store.files.settle(job, key, succeeded=False, started=False)
            self._unclaimed_files.pop(0)
            if self.watches is not None:
                self.watches.offer_again(job, paths)
                self.watches.wake()
