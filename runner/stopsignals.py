"""How a supervisor is asked to stop: SIGTERM, SIGINT or SIGHUP while a run is supervised stop the
job (and a second one kills it) instead of killing the supervisor outright."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from typing import Any


class StopSignals:
    """While a run is supervised, SIGTERM/SIGINT/SIGHUP ask it to stop the job instead of killing
    the supervisor outright; a second one escalates to SIGKILL. A no-op outside the main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self.count = 0
        self.read_fd: int | None = None
        self._saved: dict[int, Any] = {}
        self._old_wakeup = -1
        self._event = threading.Event()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self.read_fd, write_fd = os.pipe()
        self._write_fd = write_fd
        os.set_blocking(write_fd, False)
        os.set_blocking(self.read_fd, False)
        self._old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = self.received or signum
        self.count += 1
        self._event.set()

    def wait(self, seconds: float) -> bool:
        if self.read_fd is None:
            return self._event.wait(seconds)
        select.select([self.read_fd], [], [], seconds)
        self.drain()
        return self.received is not None

    def drain(self) -> None:
        if self.read_fd is not None:
            with contextlib.suppress(BlockingIOError):
                os.read(self.read_fd, 512)

    def __exit__(self, *exc: object) -> None:
        if self.read_fd is None:
            return
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self.read_fd)
        os.close(self._write_fd)


def signame(signum: int | None) -> str:
    """SIGTERM, not 15, in what the history and the terminal say."""
    if not signum:
        return "a signal"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
