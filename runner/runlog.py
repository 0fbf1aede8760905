"""A run's log file: where it lives (`LOG_DIR/JOB/YYYY-MM-DD/RUN_ID.log`), the job's output copied
in from a pipe and capped at `max_log_bytes`, and read back (also while it grows) in constant memory.

Past the cap, the first half of the output stays, and of the rest only the newest part: a line
between the two says how many bytes were cut there. The writer keeps the file within 1.25 times
the cap while the run goes on (it cuts in steps, not at every write) and within the cap at the end.
The cut line has a fixed size and place, so a reader that follows the file while it is cut can
tell where it was (see `stream`).
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("runner.runlog")

CHUNK_BYTES = 64 * 1024
PIPE_BYTES = 1024 * 1024  # a burst of output waits in the pipe, not in the job, while we copy
MARKER_BYTES = 200
FOLLOW_POLL_S = 0.5
BUSY_POLL_S = 0.02
_MARKER = re.compile(rb"\n----- runner: ([ ~])(\d+) bytes of output cut here")
_MARKER_START = b"\n----- runner: "
DAY_FORMAT = "%Y-%m-%d"
DAY_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")
LOG_FILE = re.compile(r"(\d+)\.log")


def log_path(log_dir: Path, job: str, run_id: int, started: datetime) -> Path:
    """Where an attempt's log goes: a folder per job and per day (UTC) it started, so that no
    folder grows without end and prune can drop whole days."""
    return log_dir / job / started.astimezone(UTC).strftime(DAY_FORMAT) / f"{run_id}.log"


def find_log(log_dir: Path, job: str, run_id: int, around: datetime | None) -> Path:
    """The log of a run whose row does not name its file (it still runs, or was stopped before it
    ended): its day folder (the day `around` or either next to it, as a claim and its start may
    fall on two sides of midnight), or where versions before day folders kept it, LOG_DIR/JOB/RUN_ID.log.
    The first that exists; else where it would be."""
    candidates = []
    if around is not None:
        candidates = [log_path(log_dir, job, run_id, around + timedelta(days=d)) for d in (0, -1, 1)]
    candidates.append(log_dir / job / f"{run_id}.log")
    return next((path for path in candidates if path.exists()), candidates[0])


def _marker(cut: int, busy: bool, max_bytes: int) -> bytes:
    from runner.config import format_size

    text = (
        f"\n----- runner: {'~' if busy else ' '}{cut} bytes of output cut here "
        f"(max_log_bytes = {format_size(max_bytes)} keeps the first and the newest part) -----"
    ).encode()
    return text[: MARKER_BYTES - 1].ljust(MARKER_BYTES - 1) + b"\n"


class RunLog:
    """Copies what the job writes to `read_fd` into `path` on a thread of its own, so the job never
    waits for the supervisor; `tail` (a text stream) also gets every byte, live."""

    def __init__(self, path: Path, max_bytes: int, tail: IO[str] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # job output: private
        self.end = os.lseek(self.fd, 0, os.SEEK_END)  # the supervisor's first line is already there
        self.head_left = max_bytes // 2 if max_bytes > 0 else -1  # 0: no cap
        self.tail_bytes = max(0, max_bytes - max_bytes // 2 - MARKER_BYTES)
        self.slack = max(self.tail_bytes // 4, CHUNK_BYTES)
        self.marker_at: int | None = None
        self.cut = 0
        self.failed: OSError | None = None
        self._tail = tail
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()

    @staticmethod
    def pipe() -> tuple[int, int]:
        """The (read, write) ends for the job's stdout and stderr."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return read_fd, write_fd

    def start(self, read_fd: int) -> None:
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), name="runlog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Copy what is still in the pipe (without waiting for writers that outlive the job), then
        stop the thread and close the file."""
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join()
        if self.marker_at is not None and self.end - self.marker_at - MARKER_BYTES > self.tail_bytes:
            with contextlib.suppress(OSError):
                self._cut()  # within the cap at the end
        if self._tail is not None:
            self._show(self._decoder.decode(b"", final=True))
        for fd in (self.fd, self._stop_r, self._stop_w):
            os.close(fd)

    def _pump(self, read_fd: int) -> None:
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if read_fd in ready:
                    data = os.read(read_fd, CHUNK_BYTES)
                    if not data:
                        return
                    self.write(data)
                elif self._stop_r in ready:
                    os.set_blocking(read_fd, False)
                    with contextlib.suppress(BlockingIOError):
                        while data := os.read(read_fd, CHUNK_BYTES):
                            self.write(data)
                    return
        finally:
            os.close(read_fd)

    def write(self, data: bytes) -> None:
        if self._tail is not None:
            self._show(self._decoder.decode(data))
        try:
            self._write(data)
        except OSError as exc:  # a full disk: the output is dropped, the job goes on
            if self.failed is None:
                log.warning("cannot write the run's log %s: %s", self.path, exc)
            self.failed = exc

    def _show(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._tail.write(text)
            self._tail.flush()

    def _write(self, data: bytes) -> None:
        if self.head_left > 0:
            head, data = data[: self.head_left], data[self.head_left :]
            self._append(head)
            self.head_left -= len(head)
        if not data:
            return
        if self.head_left == 0 and self.marker_at is None:
            self.marker_at = self.end
            self._append(_marker(0, False, self.max_bytes))
        self._append(data)
        if (
            self.marker_at is not None
            and self.end - self.marker_at - MARKER_BYTES > self.tail_bytes + self.slack
        ):
            self._cut()

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.end)
            self.end += written
            view = view[written:]

    def _cut(self) -> None:
        """Keep the newest tail_bytes (from a line start when one is near) right after the marker."""
        tail_start = self.marker_at + MARKER_BYTES
        keep_from = self.end - self.tail_bytes
        newline = os.pread(self.fd, CHUNK_BYTES, keep_from).find(b"\n")
        if newline >= 0:
            keep_from += newline + 1
        os.pwrite(self.fd, _marker(self.cut, True, self.max_bytes), self.marker_at)
        dst, src = tail_start, keep_from
        while src < self.end:
            chunk = os.pread(self.fd, min(CHUNK_BYTES * 16, self.end - src), src)
            os.pwrite(self.fd, chunk, dst)
            src += len(chunk)
            dst += len(chunk)
        self.cut += keep_from - tail_start
        os.ftruncate(self.fd, dst)
        self.end = dst
        os.pwrite(self.fd, _marker(self.cut, False, self.max_bytes), self.marker_at)


def stream(path: Path, out: IO[bytes], follow: Callable[[], bool] | None = None) -> None:
    """Copy the log at `path` to `out` in CHUNK_BYTES pieces; with `follow`, keep copying what is
    added while `follow()` is true. Where the writer cuts the part being read, one line says so."""
    with open(path, "rb") as handle:
        reader = _Reader(handle, out)
        while True:
            if reader.step():
                continue
            out.flush()
            if follow is None or not follow():
                if not reader.step():
                    out.flush()
                    return
                continue
            time.sleep(FOLLOW_POLL_S)


def tail(path: Path | None, max_lines: int, max_bytes: int) -> str:
    """The last `max_lines` lines of the log at `path` (at most its last `max_bytes`), as text; ""
    when there is no log (what a notification or a dead-man ping shows of a run)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read(max_bytes)
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if len(data) == max_bytes and size > max_bytes:
        lines = lines[1:]  # the first one is cut
    return "\n".join(lines[-max_lines:]) + ("\n" if lines else "")


class _Reader:
    def __init__(self, handle: Any, out: IO[bytes]) -> None:
        self.handle, self.out = handle, out
        self.offset = 0
        self.marker_at: int | None = None
        self.cut_seen = 0
        self.carry = b""  # the end of the last piece, in case a marker starts there

    def _marker(self) -> tuple[bool, int] | None:
        self.handle.seek(self.marker_at)
        found = _MARKER.match(self.handle.read(MARKER_BYTES))
        return (found.group(1) == b"~", int(found.group(2))) if found else (True, 0)

    def step(self) -> bool:
        """Copy one piece; False when there is nothing more to copy now."""
        if self.marker_at is None:
            return self._before_marker()
        before = self._marker()
        if before[0]:
            time.sleep(BUSY_POLL_S)  # being cut right now
            return True
        if before[1] != self.cut_seen:
            self.offset -= before[1] - self.cut_seen
            self.cut_seen = before[1]
            tail_start = self.marker_at + MARKER_BYTES
            if self.offset < tail_start:
                missed = tail_start - self.offset
                self.out.write(f"\n----- runner: {missed} bytes were cut while being read -----\n".encode())
                self.offset = tail_start
        self.handle.seek(self.offset)
        data = self.handle.read(CHUNK_BYTES)
        if self._marker() != before:
            return True  # cut while we read: read again
        self.out.write(data)
        self.offset += len(data)
        return bool(data)

    def _before_marker(self) -> bool:
        self.handle.seek(self.offset)
        data = self.handle.read(CHUNK_BYTES)
        if not data:
            return False
        window = self.carry + data
        at = window.find(_MARKER_START)
        marker_at = self.offset - len(self.carry) + at
        marker = self._marker_at(marker_at) if at >= 0 else None
        if marker is None:  # no marker here (or a torn one: then it is read as output)
            self.out.write(data)
            self.offset += len(data)
            self.carry = window[-len(_MARKER_START) :]
            return True
        self.out.write(data[: max(0, marker_at - self.offset)])
        start = max(self.offset, marker_at)
        self.handle.seek(start)
        self.out.write(self.handle.read(marker_at + MARKER_BYTES - start))
        self.marker_at, self.offset, self.cut_seen = marker_at, marker_at + MARKER_BYTES, marker[1]
        return True

    def _marker_at(self, at: int) -> tuple[bool, int] | None:
        self.handle.seek(at)
        found = _MARKER.match(self.handle.read(MARKER_BYTES))
        if found is None or found.group(1) == b"~":
            return None
        return False, int(found.group(2))
