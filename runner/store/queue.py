"""The writer queue: writers to one SQLite file take turns on a lock file, woken the moment it
is free, instead of polling in SQLite's busy handler."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import sqlalchemy as sa

from runner.errors import DatabaseBusy, StorageError
from runner.private import FILE_MODE as PRIVATE_FILE_MODE


class QueueTimeout(Exception):
    """The writer queue's lock was not free within lock_timeout."""


class WouldWait(Exception):
    """Another writer holds the database right now (for callers that would rather not wait)."""


class WriterQueue:
    """Writers to one SQLite file take turns on a lock file before BEGIN IMMEDIATE.

    SQLite's own busy handler polls with sleeps of up to 100 ms, which is what a busy moment's
    slowest runs wait; flock() wakes the next writer here the moment the lock is free. SQLite's
    locking still guards correctness: a writer that does not queue (another program, a job
    process) is merely slower. A writer gives up after `lock_timeout` with DatabaseBusy.
    """

    def __init__(self, path: Path, timeout_s: float, busy: Callable[[], DatabaseBusy]) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._busy = busy
        self._fd: int | None = None
        self._pid = 0
        self._depth = 0
        self._thread_lock = threading.RLock()
        queue = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (alive := queue()) is not None and alive._forget_parent())

    def _forget_parent(self) -> None:
        """In a forked child: close the parent's lock file. The child shares its open file, and
        with it the parent's lock: a daemon killed mid-write left the lock held by its fork server
        and workers, which then waited for it until lock_timeout."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._pid, self._depth = None, 0, 0

    @contextlib.contextmanager
    def begin(self, engine: sa.Engine) -> Iterator[sa.Connection]:
        with self.held(), engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """This process's turn, outside any transaction (what VACUUM needs)."""
        with self._thread_lock:
            self._own_fd()
            if self._depth == 0:
                self._lock()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    import fcntl

                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def try_lock(self) -> bool:
        """Take the queue's lock only if it is free now (outside any begin() of this process)."""
        import fcntl

        self._thread_lock.acquire()
        try:
            self._own_fd()
        except StorageError:
            self._thread_lock.release()
            raise
        if self._depth:
            self._depth += 1
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._thread_lock.release()
            return False
        self._depth = 1
        return True

    def unlock(self) -> None:
        import fcntl

        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def _own_fd(self) -> None:
        """This process's own descriptor of the lock file (a forked child must not share the
        parent's: it would share the parent's lock)."""
        if self._pid != os.getpid():
            self._fd = self._open()
            self._pid, self._depth = os.getpid(), 0

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except OSError as exc:  # a read-only or full file system, a folder we may not write
            raise StorageError(
                f"cannot write beside database {self.path.parent}: {exc.strerror}; "
                "check the file system and the folder's permissions"
            ) from None

    def _lock(self) -> None:
        """flock(), bounded by `lock_timeout`. Waiters block in the kernel, which hands the lock
        on the moment it is free (polling with naps instead made a busy daemon's fires convoy:
        p99 lateness 40 ms -> 1.4 s in bench/dispatch.py). In a main thread the bound is an
        interval timer; other threads of runner's own processes hold the lock only for short
        transactions of runner's own and wait without one. Job processes never queue here (see
        Store.after_fork), so a job's own signal handling is never touched."""
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if threading.current_thread() is not threading.main_thread():
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            return

        def give_up(_signum: int, _frame: FrameType | None) -> None:
            raise QueueTimeout

        previous = signal.signal(signal.SIGALRM, give_up)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except QueueTimeout:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # in case the timer fired just after we got it
            raise self._busy() from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
