"""The database going away (a restart, a reset connection, a fail-over): the daemon's view of
it (logged once when it starts and once when it ends, probed with backoff in between), and
`patiently()` for a write that may wait for the database to come back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from runner.errors import StorageError

T = TypeVar("T")

log = logging.getLogger("runner.daemon")

PROBE_FIRST_S = 0.5  # the first probe after a failure comes this soon
PROBE_MAX_S = 2.0  # the backoff between probes stops growing here (a probe is one connection)


def patiently(write: Callable[[], T], patience_s: float) -> T:
    """`write()`, tried again with backoff while the database fails it (StorageError), for up to
    `patience_s`; then the last StorageError is raised."""
    deadline = time.monotonic() + patience_s
    nap_s = PROBE_FIRST_S / 2
    while True:
        try:
            return write()
        except StorageError:
            if time.monotonic() + nap_s > deadline:
                raise
        time.sleep(nap_s)
        nap_s = min(nap_s * 2, PROBE_MAX_S)


class Outage:
    """Whether the daemon's database takes writes. Any thread reports a failed write
    (`failed`) or a fire a worker could not claim (`suspect`); the daemon's loop probes when
    `probe_due()` and calls `back()` when a probe works."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None  # monotonic: when the outage was noticed
        self.suspected = False  # a worker could not claim a fire: probe at once
        self._pause_s = PROBE_FIRST_S
        self._next_probe = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        """A write failed: the first failure of an outage is logged, the others only push the
        next probe back (doubling the pause, up to PROBE_MAX_S)."""
        with self._lock:
            now = time.monotonic()
            self.suspected = False
            if self.since is None:
                self.since = now
                self._pause_s = PROBE_FIRST_S
                log.error(
                    "database unreachable: %s; trying again every %gs at most; scheduled fires wait and "
                    "follow their catchup setting when it is back, files wait unclaimed",
                    exc,
                    PROBE_MAX_S,
                )
            else:
                self._pause_s = min(self._pause_s * 2, PROBE_MAX_S)
            self._next_probe = now + self._pause_s

    def suspect(self) -> None:
        with self._lock:
            self.suspected = True

    def probe_due(self) -> bool:
        """Time to try the database again (at once when a worker just could not claim)."""
        with self._lock:
            if self.suspected:
                return True
            return self.since is not None and time.monotonic() >= self._next_probe

    def back(self) -> float | None:
        """A write worked: the outage (if there was one) is over; returns how long it lasted."""
        with self._lock:
            self.suspected = False
            if self.since is None:
                return None
            lasted_s = time.monotonic() - self.since
            self.since = None
        log.warning("database reachable again after %.1fs: catching up", lasted_s)
        return lasted_s
