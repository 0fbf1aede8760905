"""The daemon's file events: watched folders claim their files and fire the job (a mixin of
runner.daemon.Daemon)."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from runner.context import Fire
from runner.errors import EXIT_NOT_STARTED, StorageError
from runner.forkserver import GONE
from runner.messages import NOT_CLAIMED, FireRequest
from runner.models import Trigger


class FileEvents:
    """Uses the daemon's settings, store, dispatcher, fork server and outage (runner.daemonoutage)."""

    settings: Any
    store: Any
    dispatcher: Any
    server: Any
    watches: Any
    outage: Any
    _stopping: bool
    _send: Any
    _unclaimed_files: list[tuple[str, str, list[str]]]
    _database_failed: Any
    _on_unclaimed: Any

    def _start_watches(self) -> None:
        from runner.watch import WatchService

        jobs = [(name, job) for name, job in sorted(self.settings.jobs.items()) if job.watch]
        self.watches = WatchService(
            jobs,
            claim=self._claim_files,
            dispatch=self._dispatch_files,
            free_slots=lambda: self.settings.runner.max_workers - self.server.in_flight,
            release=self._release_files,
            held=lambda: self.outage.down,
        )
        self.watches.start()

    def _claim_files(self, name: str, versions: list[Any]) -> tuple[str, list[str]]:
        key = f"files:{uuid.uuid4().hex}"
        try:
            return key, self.store.files.claim(name, key, [(v.path, v.size, v.mtime_ns) for v in versions])
        except StorageError as exc:  # the files stay pending; the daemon probes the database
            self._database_failed(exc)
            raise

    def _release_files(self, name: str, gone: set[str]) -> tuple[int, int]:
        try:
            return self.store.files.release_orphans(name, gone)
        except StorageError as exc:
            self._database_failed(exc)
            raise

    def _dispatch_files(self, name: str, key: str, paths: list[str]) -> None:
        fire = Fire(Trigger.FILE, key, paths=tuple(Path(p) for p in paths))
        if self._stopping or self.dispatcher is None:
            self.store.files.settle(name, key, succeeded=False)
            return
        future = self._send(FireRequest(name, fire))  # counted in `runner status` when it ran

        def done(result: Future[int]) -> None:
            if result.result() == NOT_CLAIMED:  # claimed, but its run could not start: given back later
                self._unclaimed_files.append((name, key, paths))
                self._on_unclaimed()
                return
            if result.result() == GONE and self.watches is not None:  # its supervisor worker died
                self.watches.fire_gone(name, key)
            if result.result() == EXIT_NOT_STARTED and self.watches is not None:
                self.watches.offer_again(name, paths)  # skipped (overlap): its files wait for the next run
            if self.watches is not None:
                self.watches.wake()

        future.add_done_callback(done)
