"""The one execution path: claim the fire, take the overlap lease, run the job body in a supervised
child process, record the outcome, retry. `runner run`, crontab lines, the daemon and file events
all start jobs through `execute()` and nothing else does."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import jsonsafe
from runner.context import STOP, Fire, JobContext
from runner.errors import AlreadyRan, FilesVanished, OverlapSkipped, Stopped, StorageError
from runner.models import RunStatus, SkipReason, Trigger, utcnow
from runner.private import open_private, private_folder
from runner.runlog import RunLog
from runner.terminal import LiveTerminal

if TYPE_CHECKING:
    from runner.config import RunnerSettings, Settings
    from runner.containment import Containment
    from runner.jobapi import JobSpec
    from runner.store import Store

log = logging.getLogger("runner.execution")

QUEUE_POLL_S = 1.0
LIVE_TAIL_POLL_S = 0.1
MAX_BACKOFF_S = 3600.0
RETRY_JITTER = 0.25  # a retry waits its backoff plus up to this fraction more, at random
LATE_AFTER_S = 1.0  # a fire that starts this much after it was due is recorded late
ERROR_SUMMARY_CHARS = 500
PR_SET_PDEATHSIG = 1
CHILD_SETUP_FAILED = 70  # EX_SOFTWARE: the child died before the job body started
BUSY_BEAT_RETRY_S = 0.5  # a heartbeat skipped because the database was busy is retried this soon
PR_SET_PDEATHSIG_SIGNAL = signal.SIGRTMIN + 1  # the leader's own notice that the supervisor died
LOG_FORMAT = "%(asctime)s run=%(run_id)s job=%(job)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one fire after all its attempts."""

    run_id: int
    first_run_id: int
    attempts: int
    status: RunStatus
    exit_code: int | None
    signal: int | None
    error: str | None
    result: Any
    log_path: Path | None
    duration_s: float
    stop_signal: int | None = None  # set when the supervisor itself was told to stop
    acked_files_only: bool = False  # the job went through ctx.files(): it said which it finished
    file_in_progress: str | None = None  # the ctx.files() file it was on when it ended, if any

    @property
    def cli_exit_code(self) -> int:
        if self.stop_signal:
            return 128 + self.stop_signal
        return 0 if self.status is RunStatus.SUCCEEDED else 1


def execute(
    spec: JobSpec,
    params: Mapping[str, Any],
    fire: Fire,
    *,
    settings: RunnerSettings,
    store: Store,
    live: bool = False,
    reap: bool = True,
    resume: Any = None,
) -> Outcome:
    """Run one fire of a job to its end. Raises AlreadyRan or OverlapSkipped (exit 3) if not started.

    Before the job body starts there is one transaction (claim the fire, take the lease, mark the
    run running); after it ends, one more (record the outcome, release the lease). `resume` is
    the row of a retry a stop cut short: that attempt runs now, in that row.
    """
    from runner.spool import replay

    store.ensure_schema()
    replay(settings.var_dir, store)
    if reap:
        store.reap_lost(settings.stale_after_s)
    if not gc.isenabled():  # the CLI starts with collections off; the job gets them back
        gc.freeze()
        gc.enable()
    lease = spec.overlap != "allow"
    if fire.paths:
        fire = _drop_vanished(spec.name, fire, store)
    late_s = None
    if fire.scheduled_at is not None:
        late_s = max(0.0, (utcnow() - (fire.due_at or fire.scheduled_at)).total_seconds())
    stored_params = masked_params(params)
    claim = dict(
        job=spec.name,
        fire_key=fire.key,
        trigger=fire.kind,
        params=stored_params,
        paths=[str(p) for p in fire.paths] or None,
        scheduled_at=fire.scheduled_at,
        # A daemon fire (it knows when it was due) that waited is late; a cron line says so itself.
        late=fire.late or (fire.due_at is not None and late_s is not None and late_s > LATE_AFTER_S),
        late_s=late_s,
    )
    ttl_s = settings.stale_after_s if lease else None
    try:
        if resume is not None:
            store.requeue(resume)
            run_id, first, holder = resume.id, (resume.attempt, resume.first_run_id or resume.id), None
            if lease:
                holder = store.leases.acquire(spec.name, run_id, settings.stale_after_s)
        else:
            run_id, holder = store.claim(**claim, lease_ttl_s=ttl_s)
            first = (1, run_id)
        outcome = _run_attempts(
            spec, params, fire, claim, run_id, holder, settings, store, live, lease, first
        )
    except (AlreadyRan, OverlapSkipped, Stopped):
        if fire.paths:  # not started (or stopped while queued): its files go back, untouched
            store.files.settle(spec.name, fire.key, succeeded=False, started=False)
        raise
    if fire.paths:
        # With ctx.files() the job acknowledged each file it finished; the rest go back.
        finished = outcome.status is RunStatus.SUCCEEDED and not outcome.acked_files_only
        store.files.settle(spec.name, fire.key, succeeded=finished, blame=outcome.file_in_progress)
    return outcome


def _drop_vanished(job: str, fire: Fire, store: Store) -> Fire:
    """Claimed files deleted before the run: recorded vanished, never handed to the job."""
    from dataclasses import replace

    present = tuple(p for p in fire.paths if p.exists())
    if len(present) == len(fire.paths):
        return fire
    gone = [str(p) for p in fire.paths if p not in present]
    store.files.mark_vanished(job, fire.key, gone)
    if present:
        return replace(fire, paths=present)
    error = f"{len(gone)} file(s) were deleted before the run could open them: {', '.join(gone)}"
    store.record_skipped(job, fire.kind, [(fire.key, None)], SkipReason.VANISHED.value, error)
    raise FilesVanished(f"job {job}: not started: {error}")


def _run_attempts(
    spec: JobSpec,
    params: Mapping[str, Any],
    fire: Fire,
    claim: dict[str, Any],
    run_id: int,
    holder: Any,
    settings: RunnerSettings,
    store: Store,
    live: bool,
    lease: bool,
    first: tuple[int, int],
) -> Outcome:
    from runner.store import RunEnd

    attempt, first_run_id = first
    with _StopSignals() as stops:
        if holder is not None:
            _wait_for_lease(spec, run_id, holder, settings, store, stops)
        while True:
            final = attempt > spec.retries
            outcome = _attempt(
                spec,
                params,
                fire,
                run_id,
                first_run_id,
                attempt,
                settings,
                store,
                live,
                stops,
                release_lease=lease and final,
            )
            if outcome.status is RunStatus.SUCCEEDED or outcome.stop_signal or final:
                if lease and not final:
                    store.leases.release(spec.name, run_id)
                return outcome
            attempt += 1
            next_id, _ = store.claim(
                **{**claim, "late_s": None},
                attempt=attempt,
                first_run_id=first_run_id,
                status=RunStatus.QUEUED,
            )
            if lease:
                store.leases.move(spec.name, run_id, next_id)
            run_id = next_id
            delay = retry_delay(spec.retry_backoff_s, attempt - 1)
            _say(
                live,
                f"run {outcome.run_id} {outcome.status}: {outcome.error}; "
                f"retry {attempt - 1}/{spec.retries} as run {run_id} in {delay:.1f}s",
            )
            beat = partial(store.heartbeat, run_id, spec.name if lease else None, settings.stale_after_s)
            if not _wait(delay, stops, beat, settings.heartbeat_s):
                error = f"stopped by {_signame(stops.received)} before the retry started"
                # A scheduled fire's retry is taken up again by the next daemon (within catchup).
                resumable = fire.kind == Trigger.SCHEDULE.value
                store.finish(
                    run_id,
                    RunEnd(
                        status=RunStatus.KILLED,
                        ended_at=utcnow(),
                        error=error,
                        reason=SkipReason.RETRY_STOPPED if resumable else None,
                    ),
                    release_lease_of=spec.name if lease else None,
                )
                return Outcome(
                    run_id,
                    first_run_id,
                    attempt,
                    RunStatus.KILLED,
                    None,
                    None,
                    error,
                    None,
                    None,
                    0.0,
                    stops.received,
                )


def execute_configured(
    settings: Settings,
    store: Store,
    job: str,
    fire: Fire,
    *,
    live: bool = False,
    reap: bool = True,
    resume: Any = None,
) -> Outcome:
    """A scheduled, cron or file fire: the job's parameters come from its INI section alone."""
    from runner.discovery import config_origin, find_job
    from runner.params import bind

    spec = find_job(settings, job)
    params = bind(
        job, spec.params, [(config_origin(settings, job), spec.config_params)], base_dir=settings.path.parent
    )
    return execute(
        spec, params, fire, settings=settings.runner, store=store, live=live, reap=reap, resume=resume
    )


def record_missed(
    store: Store, job: str, fire: Fire, error: str, reason: SkipReason = SkipReason.CATCHUP
) -> None:
    """A fire nobody will run: record it (skipped) so history and `runner status` show it."""
    from runner.errors import AlreadyRan

    with contextlib.suppress(AlreadyRan):  # somebody ran it after all
        store.claim(
            job=job,
            fire_key=fire.key,
            trigger=fire.kind,
            scheduled_at=fire.scheduled_at,
            late=True,
            status=RunStatus.SKIPPED,
            error=error,
            reason=reason.value,
        )


def masked_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as history and logs show them: JSON values, secret-looking ones and URL passwords as ***."""
    from runner.config import mask_value

    plain = jsonsafe.jsonable(dict(params))
    return {key: mask_value(key, value) for key, value in plain.items()}


def retry_delay(backoff_s: float, retry_number: int) -> float:
    """Exponential backoff (capped at an hour), never shorter than the setting: the jitter that
    spreads retries of many jobs comes on top, up to RETRY_JITTER of the backoff."""
    delay = min(MAX_BACKOFF_S, backoff_s * 2 ** (retry_number - 1))
    return delay + random.uniform(0, delay * RETRY_JITTER)


def _wait_for_lease(
    spec: JobSpec,
    run_id: int,
    holder: Any,
    settings: RunnerSettings,
    store: Store,
    stops: _StopSignals,
) -> None:
    """overlap = skip: record the run skipped and raise; overlap = queue: wait for the lease."""
    from runner.store import RunEnd

    if spec.overlap == "skip":
        since = holder.started_at or holder.queued_at
        store.finish(
            run_id,
            RunEnd(
                status=RunStatus.SKIPPED,
                ended_at=utcnow(),
                error=f"overlap: run {holder.id} was still running",
                reason=SkipReason.OVERLAP,
            ),
        )
        raise OverlapSkipped(
            f"job {spec.name} is still running as run {holder.id} (pid {holder.pid} on {holder.host}, "
            f"since {since.astimezone():%Y-%m-%d %H:%M:%S}); not started (overlap = skip)"
        )
    log.info(
        "run %s: waiting for run %s of job %s to finish (overlap = queue)",
        run_id,
        holder.id,
        spec.name,
    )
    while holder is not None:
        if not _wait(QUEUE_POLL_S, stops, lambda: store.heartbeat(run_id, None, 0), settings.heartbeat_s):
            store.finish(
                run_id,
                RunEnd(
                    status=RunStatus.KILLED,
                    ended_at=utcnow(),
                    error=f"stopped by {_signame(stops.received)} while queued",
                ),
            )
            raise Stopped(
                f"job {spec.name}: stopped by {_signame(stops.received)} while waiting for run {holder.id}",
                stops.received or signal.SIGTERM,
            )
        store.reap_lost(settings.stale_after_s)
        holder = store.leases.acquire(spec.name, run_id, settings.stale_after_s)


def _wait(seconds: float, stops: _StopSignals, heartbeat: Callable[[], None], every_s: float) -> bool:
    """Sleep, heartbeating; False if a stop signal arrived."""
    end = time.monotonic() + seconds
    next_beat = time.monotonic() + every_s
    while (left := end - time.monotonic()) > 0:
        if stops.wait(min(left, max(0.0, next_beat - time.monotonic()))):
            return False
        if time.monotonic() >= next_beat:
            heartbeat()
            next_beat = time.monotonic() + every_s
    return not stops.received


def _attempt(
    spec: JobSpec,
    params: Mapping[str, Any],
    fire: Fire,
    run_id: int,
    first_run_id: int,
    attempt: int,
    settings: RunnerSettings,
    store: Store,
    live: bool,
    stops: _StopSignals,
    *,
    release_lease: bool,
) -> Outcome:
    from runner.containment import Containment
    from runner.spool import record_outcome
    from runner.store import RunEnd

    log_path = run_log_path(settings, spec.name, run_id)
    started = utcnow()
    if attempt > 1:  # the first attempt's row was marked running when it was claimed
        store.start(run_id, started)
    containment = Containment.create(cgroup=settings.contain == "cgroup")
    terminal = LiveTerminal(sys.stderr) if live else None
    try:
        private_folder(log_path.parent)  # job output may hold secrets: 0700, files 0600
        started_line = (
            f"run {run_id} of job {spec.name} started: attempt {attempt}, "
            f"trigger {fire.kind}, fire {fire.key}, params {masked_params(params)!r}"
        )
        _append(log_path, started_line)
        if terminal is not None:  # the started line goes above any progress bar
            terminal.write(log_path.read_text(encoding="utf-8", errors="replace"))
        max_log_bytes = settings.max_log_bytes if spec.max_log_bytes is None else spec.max_log_bytes
        runlog = RunLog(log_path, max_log_bytes, tail=terminal)
        child = _Child.spawn(spec, params, fire, run_id, attempt, store, runlog, live, containment)
    except OSError as exc:  # a full or read-only log folder: the job cannot start
        containment.close()
        error = f"cannot write the run log {log_path}: {exc.strerror or exc}"
        record_outcome(
            store,
            settings.var_dir,
            run_id,
            RunEnd(status=RunStatus.FAILED, ended_at=utcnow(), error=error),
            release_lease_of=spec.name if spec.overlap != "allow" else None,
            patience_s=settings.lock_timeout_s,
        )
        raise StorageError(f"job {spec.name}: {error}; run {run_id} is recorded failed") from None
    # The first beat records where the job's processes are, for whoever reaps a dead supervisor
    # (a run that ends sooner never needs it: its group leader kills them if the supervisor dies).
    unrecorded = {"job_pid": child.pid, "cgroup": str(containment.cgroup) if containment.cgroup else None}

    def heartbeat() -> bool:
        lease_job = spec.name if spec.overlap != "allow" else None
        extra = unrecorded.copy()
        if store.heartbeat(run_id, lease_job, settings.stale_after_s, wait=False, **extra):
            unrecorded.clear()
            return True
        return False

    child.supervise(
        timeout_s=spec.timeout_s,
        grace_s=settings.kill_grace_s,
        heartbeat=heartbeat,
        heartbeat_s=settings.heartbeat_s,
        stops=stops,
        tail=terminal,
    )
    status, exit_code, sig, error = child.verdict(spec.timeout_s)
    ended = utcnow()
    duration = (ended - started).total_seconds()
    with contextlib.suppress(OSError):  # a full disk must not change what is recorded
        _append(
            log_path,
            f"run {run_id} {status.value} in {duration:.2f}s" + (f": {error}" if error else ""),
        )
    record_outcome(
        store,
        settings.var_dir,
        run_id,
        RunEnd(
            status=status,
            ended_at=ended,
            exit_code=exit_code,
            signal=sig,
            error=error,
            result=child.result,
            log_path=str(log_path),
        ),
        release_lease_of=spec.name if release_lease else None,
        patience_s=settings.lock_timeout_s,
    )
    return Outcome(
        run_id,
        first_run_id,
        attempt,
        status,
        exit_code,
        sig,
        error,
        child.result,
        log_path,
        duration,
        stops.received if status is RunStatus.KILLED else None,
        child.acked_files_only,
        child.file_in_progress,
    )


def run_log_path(settings: RunnerSettings, job: str, run_id: int) -> Path:
    return settings.log_dir / job / f"{run_id}.log"


def _append(path: Path, line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8") as handle:
        handle.write(f"{stamp} runner: {line}\n")


def _say(live: bool, message: str) -> None:
    log.warning(message)
    if live:
        print(f"runner: {message}", file=sys.stderr, flush=True)


def _signame(signum: int | None) -> str:
    if not signum:
        return "a signal"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _StopSignals:
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

    def __enter__(self) -> _StopSignals:
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


class _Child:
    """The forked process that runs the job body, in its own process group."""

    def __init__(self, pid: int, result_fd: int, runlog: RunLog) -> None:
        self.pid = pid
        self.result_fd = result_fd
        self.runlog = runlog
        self.wait_status: int | None = None
        self.payload = bytearray()
        self.timed_out = False
        self.stopped_by: int | None = None
        self.result: Any = None
        self.acked_files_only = False
        self.containment: Containment
        self.file_in_progress: str | None = None
        self._bars_seen = 0  # how much of payload _show_bars has looked at

    @classmethod
    def spawn(
        cls,
        spec: JobSpec,
        params: Mapping[str, Any],
        fire: Fire,
        run_id: int,
        attempt: int,
        store: Store,
        runlog: RunLog,
        live: bool,
        containment: Containment,
    ) -> _Child:
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
                code = _leader_main(
                    spec,
                    params,
                    fire,
                    run_id,
                    attempt,
                    store,
                    log_fd,
                    write_fd,
                    supervisor,
                    live,
                    containment,
                )
            finally:
                os._exit(code)
        os.close(write_fd)
        os.close(log_fd)
        runlog.start(output_fd)
        with contextlib.suppress(OSError):  # both sides set the group, whichever runs first
            os.setpgid(pid, pid)
        containment.job_pid = pid
        child = cls(pid, read_fd, runlog)
        child.containment = containment
        return child

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
        heartbeat: Callable[[], None],
        heartbeat_s: float,
        stops: _StopSignals,
        tail: LiveTerminal | None,
    ) -> None:
        started = time.monotonic()
        deadline = started + timeout_s if timeout_s else None
        next_beat = started + heartbeat_s  # the first beat also records the job's pid and cgroup
        kill_at: float | None = None
        poller = select.poll()
        pidfd = _pidfd_open(self.pid)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        poller.register(self.result_fd, select.POLLIN)
        if stops.read_fd is not None:
            poller.register(stops.read_fd, select.POLLIN)
        try:
            while True:
                now = time.monotonic()
                wake = [next_beat]
                if deadline and not self.timed_out:
                    wake.append(deadline)
                if kill_at:
                    wake.append(kill_at)
                if pidfd is None:
                    wake.append(now + LIVE_TAIL_POLL_S)
                events = poller.poll(max(0.0, min(wake) - now) * 1000)
                for fd, _ in events:
                    if fd == self.result_fd:
                        chunk = os.read(fd, 65536)
                        if chunk:
                            self.payload += chunk
                        else:
                            poller.unregister(fd)
                        if tail is not None:
                            self._show_bars(tail)
                    elif fd == stops.read_fd:
                        stops.drain()
                if self._reap():
                    break
                now = time.monotonic()
                if stops.received and self.stopped_by is None:
                    self.stopped_by = stops.received
                    self._signal_group(signal.SIGTERM)
                    kill_at = now + grace_s
                elif stops.count > 1 and kill_at:
                    kill_at = now
                if deadline and now >= deadline and not self.timed_out and self.stopped_by is None:
                    self.timed_out = True
                    self._signal_group(signal.SIGTERM)
                    kill_at = now + grace_s
                if kill_at and now >= kill_at:
                    self._signal_group(signal.SIGKILL)
                    kill_at = None
                if now >= next_beat:
                    # Never waits for the database (its child may hold the write lock): a busy
                    # database skips this beat and the next try comes sooner.
                    beat = False
                    try:
                        beat = heartbeat()
                    except Exception as exc:  # a database hiccup must not kill the run
                        log.warning("heartbeat failed: %s", exc)
                    next_beat = time.monotonic() + (
                        heartbeat_s if beat else min(heartbeat_s, BUSY_BEAT_RETRY_S)
                    )
        finally:
            if pidfd is not None:
                os.close(pidfd)
            os.set_blocking(self.result_fd, False)
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(self.result_fd, 65536):
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

    def verdict(self, timeout_s: float | None) -> tuple[RunStatus, int | None, int | None, str | None]:
        """(status, exit code, signal, one-line error) from how the child ended."""
        from runner.config import format_duration

        message: dict[str, Any] = {}
        # One JSON record a line: {"file": ...} as ctx.files() walks, {"bar": ...} for a terminal,
        # {"acked_files_only": true} when ctx.files() starts, then the result message.
        for line in self.payload.decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and set(record) == {"file"}:
                    self.file_in_progress = record["file"]
                elif isinstance(record, dict) and "bar" in record:
                    continue
                elif isinstance(record, dict):
                    message.update(record)
        self.result = message.get("result")
        self.acked_files_only = bool(message.get("acked_files_only"))
        status = self.wait_status or 0
        code = os.waitstatus_to_exitcode(status)
        exit_code, sig = (code, None) if code >= 0 else (None, -code)
        if self.stopped_by:
            return (
                RunStatus.KILLED,
                exit_code,
                sig,
                f"stopped by {_signame(self.stopped_by)} to the supervisor",
            )
        if self.timed_out:
            return (
                RunStatus.TIMED_OUT,
                exit_code,
                sig,
                f"timed out after {format_duration(timeout_s or 0)}",
            )
        if sig is not None:
            return RunStatus.FAILED, None, sig, _describe_signal(sig)
        if exit_code == 0:
            return RunStatus.SUCCEEDED, 0, None, None
        error = message.get("error") or f"exit code {exit_code}"
        return RunStatus.FAILED, exit_code, None, error


def _describe_signal(sig: int) -> str:
    name = _signame(sig)
    hints = {
        signal.SIGKILL: " (by another process or the kernel's out-of-memory killer; see dmesg)",
        signal.SIGSEGV: " (segmentation fault in native code)",
        signal.SIGABRT: " (aborted by native code)",
    }
    return f"killed by {name}{hints.get(sig, '')}"


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # old kernel: fall back to polling waitpid


# --- the child side ------------------------------------------------------------------------------


def _leader_main(
    spec: JobSpec,
    params: Mapping[str, Any],
    fire: Fire,
    run_id: int,
    attempt: int,
    store: Store,
    log_fd: int,
    result_fd: int,
    supervisor: int,
    live: bool,
    containment: Containment,
) -> int:
    """The job's process group leader: runs only this code, never the job's, so nothing a job does
    to its signal handlers can stop it from taking the job down when the supervisor dies. It forks
    the job process, waits for it and ends the way it ended (exit code or signal)."""
    from runner.containment import become_subreaper

    os.setpgid(0, 0)
    containment.join()
    become_subreaper()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # a stop is for the job; the leader waits for it
    signal.signal(PR_SET_PDEATHSIG_SIGNAL, lambda *_: _take_down_everything(containment))
    _set_parent_death_signal(PR_SET_PDEATHSIG_SIGNAL)
    if os.getppid() != supervisor:  # it died before prctl took effect
        _take_down_everything(containment)
    leader = os.getpid()
    pid = os.fork()
    if pid == 0:  # the job process: never returns
        code = CHILD_SETUP_FAILED
        try:
            code = _job_main(spec, params, fire, run_id, attempt, store, log_fd, result_fd, leader, live)
        finally:
            os._exit(code)
    os.close(result_fd)
    os.close(log_fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # end by the same signal, so the supervisor names it
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler
            signal.signal(-code, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def _take_down_everything(containment: Containment) -> None:
    """The supervisor is gone: kill the run's cgroup, every descendant of the leader (a subreaper:
    processes that left the group or session are re-parented to it) and the process group, which
    holds the leader itself."""
    from runner.containment import descendants

    if containment.cgroup is not None:
        with contextlib.suppress(OSError):
            (containment.cgroup / "cgroup.kill").write_text("1")
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(0, signal.SIGKILL)


def _set_parent_death_signal(signum: int) -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)


def _job_main(
    spec: JobSpec,
    params: Mapping[str, Any],
    fire: Fire,
    run_id: int,
    attempt: int,
    store: Store,
    log_fd: int,
    result_fd: int,
    leader: int,
    live: bool,
) -> int:
    _die_with_leader(leader)
    tty = None
    if live and os.isatty(2):
        tty = os.fdopen(os.dup(2), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)
    store.after_fork(job_process=True)
    STOP.report_fd = result_fd
    logger = _child_logging(run_id, spec.name)
    ctx = JobContext(
        run_id=run_id,
        job=spec.name,
        attempt=attempt,
        fire=fire,
        params=params,
        store=store,
        log=logger,
        tty=tty,
    )
    kwargs = dict(params)
    if spec.takes_ctx:
        kwargs["ctx"] = ctx
    code, message = 0, {}
    try:
        message = {"result": jsonsafe.jsonable(spec.func(**kwargs))}
    except SystemExit as exc:
        if exc.code not in (None, 0):
            code = exc.code if isinstance(exc.code, int) else 1
            message = {"error": f"exit code {code} (sys.exit({exc.code!r}))"}
    except BaseException as exc:
        # From the job's own frame down: this function's frame is ours, not the job's.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        code, message = 1, {"error": _summary(exc)}
    message["acked_files_only"] = STOP.used_files
    _write_all(result_fd, b"\n" + jsonsafe.dumps(message).encode() + b"\n")
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _die_with_leader(leader: int) -> None:
    """SIGTERM is a stop request (deferred inside ctx.files()); the leader's death is SIGKILL,
    which no job can catch or ignore."""

    def on_term(signum: int, _frame: Any) -> None:
        if STOP.deferring:  # inside ctx.files(): stop at the next file boundary
            STOP.requested = signum
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(PR_SET_PDEATHSIG_SIGNAL, signal.SIG_DFL)
    # Processes the job forks (a multiprocessing pool) get plain SIGTERM handling back: they are
    # in the job's group, so a stop reaches them, and the job's own handler covers the group.
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != leader:  # it died before prctl took effect
        os._exit(CHILD_SETUP_FAILED)


def _child_logging(run_id: int, job: str) -> logging.Logger:
    class RunFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.run_id, record.job = run_id, job
            return True

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RunFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return logging.getLogger(f"jobs.{job}")


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return jsonsafe.text(line[:ERROR_SUMMARY_CHARS])  # a NUL would make PostgreSQL refuse the row


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
