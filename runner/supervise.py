"""The supervisor's side of one attempt: fork the job's processes, copy their output to the run log,
heartbeat, enforce the timeout and stop requests (SIGTERM to every process, SIGKILL after the
grace period), collect the result pipe, kill whatever is left, and say how the attempt ended.
The forked side is runner.jobprocess; the stop requests come from runner.stopsignals."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.enums import RunStatus
from runner.jobprocess import CHILD_SETUP_FAILED, leader_main
from runner.runlog import RunLog
from runner.stopsignals import StopSignals, signame

if TYPE_CHECKING:
    from runner.containment import Containment
    from runner.runplan import Attempt
    from runner.terminal import LiveTerminal

log = logging.getLogger("runner.execution")  # the supervisor's lines keep their logger name

LIVE_TAIL_POLL_S = 0.1
BUSY_BEAT_RETRY_S = 0.5  # a heartbeat skipped because the database was busy is retried this soon
READ_CHUNK_BYTES = 65536


@dataclass(frozen=True, slots=True)
class Verdict:
    """How an attempt ended, from its wait status and what it wrote on the result pipe."""

    status: RunStatus
    exit_code: int | None
    signal: int | None
    error: str | None  # one line
    result: Any = None
    acked_files_only: bool = False  # the job went through ctx.files(): it said which it finished
    file_in_progress: str | None = None  # the ctx.files() file it was on when it ended, if any


class Child:
    """The forked processes of one attempt: the job's group leader (`pid`) and what it started."""

    def __init__(self, pid: int, result_fd: int, runlog: RunLog, containment: Containment) -> None:
        self.pid = pid
        self.result_fd = result_fd
        self.runlog = runlog
        self.containment = containment
        self.wait_status: int | None = None
        self.payload = bytearray()
        self.timed_out = False
        self.stopped_by: int | None = None
        self._bars_seen = 0  # how much of payload _show_bars has looked at
        self._deadline: float | None = None  # when the timeout strikes (monotonic)
        self._kill_at: float | None = None  # when SIGTERM escalates to SIGKILL
        self._next_beat = 0.0
        self._beat_failing_since: float | None = None  # monotonic: the database stopped taking beats
        self._beat_retry_s = BUSY_BEAT_RETRY_S

    @classmethod
    def spawn(cls, attempt: Attempt, runlog: RunLog, containment: Containment) -> Child:
        output_fd, log_fd = RunLog.pipe()  # the job's stdout and stderr, copied into the log by runlog
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = CHILD_SETUP_FAILED
            try:
                os.close(read_fd)
                os.close(output_fd)
                code = leader_main(
                    attempt, containment, log_fd=log_fd, result_fd=write_fd, supervisor=supervisor
                )
            finally:
                os._exit(code)
        os.close(write_fd)
        os.close(log_fd)
        runlog.start(output_fd)
        with contextlib.suppress(OSError):  # both sides set the group, whichever runs first
            os.setpgid(pid, pid)
        containment.job_pid = pid
        return cls(pid, read_fd, runlog, containment)

    def _signal_group(self, signum: int) -> None:
        """Signal every process of the attempt: the job's group, and those that left it (found in
        the run's cgroup, or as descendants of this subreaper)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)
        for pid in self.containment.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def supervise(
        self,
        *,
        timeout_s: float | None,
        grace_s: float,
        heartbeat: Callable[[], bool],
        heartbeat_s: float,
        stops: StopSignals,
        tail: LiveTerminal | None,
    ) -> None:
        """Wait for the attempt's end, heartbeating (`heartbeat()` is False when the database was
        busy); a timeout or a stop request ends it. Then nothing of it is left running."""
        started = time.monotonic()
        self._deadline = started + timeout_s if timeout_s else None
        self._next_beat = started + heartbeat_s  # the first beat also records the job's pid and cgroup
        self._kill_at = None
        poller = select.poll()
        pidfd = pidfd_open(self.pid)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        poller.register(self.result_fd, select.POLLIN)
        if stops.read_fd is not None:
            poller.register(stops.read_fd, select.POLLIN)
        try:
            while True:
                events = poller.poll(self._sleep_s(polling=pidfd is None) * 1000)
                self._take_events(events, poller, stops, tail)
                if self._reap():
                    break
                now = time.monotonic()
                self._enforce(now, stops, grace_s)
                if now >= self._next_beat:
                    pause_s = self._beat(heartbeat, heartbeat_s)
                    self._next_beat = time.monotonic() + pause_s
        finally:
            if pidfd is not None:
                os.close(pidfd)
            self._end(tail)

    def _beat(self, heartbeat: Callable[[], bool], heartbeat_s: float) -> float:
        """Heartbeat; the seconds until the next one. Never waits for the database (its child may
        hold the write lock): a busy database skips this beat and the next try comes sooner. A
        database that fails (gone, restarting) is logged once and tried again with backoff."""
        try:
            beat = heartbeat()
        except Exception as exc:  # a database outage must not kill the run
            if self._beat_failing_since is None:
                self._beat_failing_since = time.monotonic()
                log.warning("heartbeat failed: %s; the job goes on, retrying", exc)
            pause_s = self._beat_retry_s
            self._beat_retry_s = min(self._beat_retry_s * 2, heartbeat_s)
            return min(heartbeat_s, pause_s)
        if self._beat_failing_since is not None:
            log.info("heartbeat recorded again after %.1fs", time.monotonic() - self._beat_failing_since)
            self._beat_failing_since, self._beat_retry_s = None, BUSY_BEAT_RETRY_S
        return heartbeat_s if beat else min(heartbeat_s, BUSY_BEAT_RETRY_S)

    def _sleep_s(self, *, polling: bool) -> float:
        """Until the next thing to do: a heartbeat, the timeout, a kill, or (without a pidfd to
        wake us when the child ends) the next look at it."""
        now = time.monotonic()
        wake = [self._next_beat]
        if self._deadline and not self.timed_out:
            wake.append(self._deadline)
        if self._kill_at:
            wake.append(self._kill_at)
        if polling:
            wake.append(now + LIVE_TAIL_POLL_S)
        return max(0.0, min(wake) - now)

    def _take_events(
        self,
        events: list[tuple[int, int]],
        poller: select.poll,
        stops: StopSignals,
        tail: LiveTerminal | None,
    ) -> None:
        for fd, _ in events:
            if fd == self.result_fd:
                chunk = os.read(fd, READ_CHUNK_BYTES)
                if chunk:
                    self.payload += chunk
                else:
                    poller.unregister(fd)
                if tail is not None:
                    self._show_bars(tail)
            elif fd == stops.read_fd:
                stops.drain()

    def _enforce(self, now: float, stops: StopSignals, grace_s: float) -> None:
        """A stop request or the timeout: SIGTERM to every process, SIGKILL after `grace_s` (at
        once on a second stop request)."""
        if stops.received and self.stopped_by is None:
            self.stopped_by = stops.received
            self._signal_group(signal.SIGTERM)
            self._kill_at = now + grace_s
        elif stops.count > 1 and self._kill_at:
            self._kill_at = now
        if self._deadline and now >= self._deadline and not self.timed_out and self.stopped_by is None:
            self.timed_out = True
            self._signal_group(signal.SIGTERM)
            self._kill_at = now + grace_s
        if self._kill_at and now >= self._kill_at:
            self._signal_group(signal.SIGKILL)
            self._kill_at = None

    def _end(self, tail: LiveTerminal | None) -> None:
        """The rest of the result pipe, then nothing left running, and the log complete."""
        os.set_blocking(self.result_fd, False)
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.result_fd, READ_CHUNK_BYTES):
                self.payload += chunk
        os.close(self.result_fd)
        # Whatever the job started and left behind goes with it: its group, its cgroup, and
        # every descendant that reparented to this subreaper.
        self.containment.kill_all()
        self.containment.close()
        self.runlog.close()  # the output still in the pipe goes to the log (and the terminal)
        if tail is not None:
            self._show_bars(tail)
            tail.close()

    def _show_bars(self, terminal: LiveTerminal) -> None:
        """Draw the newest progress bar the job described since the last look."""
        end = self.payload.rfind(b"\n")
        if end < self._bars_seen:
            return
        latest = None
        for line in bytes(self.payload[self._bars_seen : end]).splitlines():
            if line.startswith(b'{"bar"'):
                with contextlib.suppress(ValueError):
                    latest = json.loads(line)
                    if latest.get("finished"):
                        terminal.bar(latest["bar"], finished=True)
                        latest = None
        self._bars_seen = end + 1
        if latest is not None:
            terminal.bar(latest["bar"])

    def _reap(self) -> bool:
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.wait_status = status
        return True

    def verdict(self, timeout_s: float | None) -> Verdict:
        """How the attempt ended: its status, exit code or signal, one-line error, and result."""
        message, file_in_progress = read_result_pipe(self.payload)
        status, exit_code, sig, error = self._ending(message, timeout_s)
        return Verdict(
            status=status,
            exit_code=exit_code,
            signal=sig,
            error=error,
            result=message.get("result"),
            acked_files_only=bool(message.get("acked_files_only")),
            file_in_progress=file_in_progress,
        )

    def _ending(
        self, message: dict[str, Any], timeout_s: float | None
    ) -> tuple[RunStatus, int | None, int | None, str | None]:
        """(status, exit code, signal, one-line error) from how the child ended."""
        from runner.durations import format_duration

        code = os.waitstatus_to_exitcode(self.wait_status or 0)
        exit_code, sig = (code, None) if code >= 0 else (None, -code)
        if self.stopped_by:
            why = f"stopped by {signame(self.stopped_by)} to the supervisor"
            return RunStatus.KILLED, exit_code, sig, why
        if self.timed_out:
            return RunStatus.TIMED_OUT, exit_code, sig, f"timed out after {format_duration(timeout_s or 0)}"
        if sig is not None:
            return RunStatus.FAILED, None, sig, describe_signal(sig)
        if exit_code == 0:
            return RunStatus.SUCCEEDED, 0, None, None
        error = message.get("error") or f"exit code {exit_code}"
        return RunStatus.FAILED, exit_code, None, error


def read_result_pipe(payload: bytes | bytearray) -> tuple[dict[str, Any], str | None]:
    """The job's result message and the ctx.files() file it was on last (None: none, or done).

    One JSON record a line: {"file": ...} as ctx.files() walks, {"bar": ...} for a terminal,
    {"acked_files_only": true} when ctx.files() starts, then the result message."""
    message: dict[str, Any] = {}
    file_in_progress = None
    for line in payload.decode("utf-8", "replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and set(record) == {"file"}:
                file_in_progress = record["file"]
            elif isinstance(record, dict) and "bar" in record:
                continue
            elif isinstance(record, dict):
                message.update(record)
    return message, file_in_progress


def describe_signal(sig: int) -> str:
    hints = {
        signal.SIGKILL: " (by another process or the kernel's out-of-memory killer; see dmesg)",
        signal.SIGSEGV: " (segmentation fault in native code)",
        signal.SIGABRT: " (aborted by native code)",
    }
    return f"killed by {signame(sig)}{hints.get(sig, '')}"


def pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # old kernel: fall back to polling waitpid
