"""The daemon's prune thread: `runner prune` every [runner] prune_every (first a little after the
start, so a daemon that restarts often still prunes), beside the dispatch, never in its way."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.settings import Settings

log = logging.getLogger("runner.daemon")

FIRST_PRUNE_S = 300.0  # after the start, or prune_every when that is shorter
STOP_WAIT_S = 5.0  # a stopping daemon waits this long for the batch in progress


class PruneThread:
    """Applies keep_runs and keep_logs in a thread of its own, with its own store (a batch is a
    short write transaction; the fires' claims queue with it on the writer lock)."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings  # read at each prune: a reload changes retention and the interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prune", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)

    def _loop(self) -> None:
        from runner.prune import prune, prune_store

        store = None
        wait_s = min(FIRST_PRUNE_S, self._settings().runner.prune_every_s or FIRST_PRUNE_S)
        while not self._stop.wait(wait_s):
            settings = self._settings()
            every_s = settings.runner.prune_every_s
            if every_s <= 0:  # off (a reload may turn it on again)
                wait_s = FIRST_PRUNE_S
                continue
            wait_s = every_s
            try:
                store = store or prune_store(settings)
                report = prune(settings, store, stopping=self._stop.is_set)
            except Exception as exc:  # the database may be away: try again next time
                log.warning("prune failed: %s", exc)
                continue
            if report.runs or report.logs:
                log.info(
                    "pruned %d runs and %d logs (%d bytes) in %.1fs",
                    report.runs,
                    report.logs,
                    report.log_bytes,
                    report.seconds,
                )
        if store is not None:
            store.engine.dispose()
