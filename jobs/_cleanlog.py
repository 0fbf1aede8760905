"""Every line of a run's log as a log record (timestamp, run id, job), also what native libraries
print: used by ingest_images, whose decoders (libtiff) write straight to file descriptor 2.

Inside `clean_log()`, Python warnings become one-line log records, and fd 2 of this process (and
of the processes it forks, such as a decoding pool) is a pipe whose lines a thread logs under
`<job logger>.stderr`. The log handler that wrote to fd 2 writes to the real stderr instead, with
no buffer and no lock of its own, so a fork while the thread logs cannot leave a lock held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

READ_BYTES = 64 * 1024
DRAIN_S = 5.0  # the longest the end of the run waits for lines still in the pipe (a fork still writing)


class _RawWriter:
    """A stream for a logging handler: each write goes to `fd` at once (no buffer, no lock)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, text: str) -> int:
        view = memoryview(text.encode("utf-8", "replace"))
        while view:
            view = view[os.write(self.fd, view) :]
        return len(text)

    def flush(self) -> None:
        pass


def _writes_to_fd2(handler: logging.Handler) -> bool:
    try:
        return isinstance(handler, logging.StreamHandler) and handler.stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def clean_log(log: logging.Logger) -> Iterator[None]:
    """Log Python warnings and the raw stderr lines of this process and its forks through `log`'s
    handlers. Does nothing where no handler writes to fd 2 (logging would feed its own pipe)."""
    handlers = [h for h in logging.getLogger().handlers if _writes_to_fd2(h)]
    if not handlers:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    real_fd = os.dup(2)
    writer = _RawWriter(real_fd)
    streams = [(handler, handler.setStream(writer)) for handler in handlers]
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, log.getChild("stderr")), daemon=True)
    pump.start()
    shown = warnings.showwarning
    warnings.showwarning = _log_warning(shown)
    try:
        yield
    finally:
        warnings.showwarning = shown
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        os.dup2(real_fd, 2)  # closes this process's write end: the pump ends once forks have exited
        pump.join(DRAIN_S)
        for handler, stream in streams:
            handler.setStream(stream)
        if not pump.is_alive():
            os.close(real_fd)  # else a fork still writes: the fd goes with the process


def _pump(read_fd: int, log: logging.Logger) -> None:
    pending = b""
    try:
        while chunk := os.read(read_fd, READ_BYTES):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                _log_line(log, line)
        _log_line(log, pending)
    finally:
        os.close(read_fd)


def _log_line(log: logging.Logger, line: bytes) -> None:
    text = line.decode("utf-8", "replace").rstrip()
    if text:
        log.warning("%s", text)


def _log_warning(shown: Any) -> Any:
    warnings_log = logging.getLogger("py.warnings")

    def show(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if file is not None:  # asked to print somewhere in particular: as it was
            shown(message, category, filename, lineno, file, line)
            return
        warnings_log.warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)

    return show
