"""The one execution path: claim the fire, take the overlap lease, run the job body in a supervised
child process (runner.supervise), record the outcome, retry. `runner run`, crontab lines, the
daemon and file events all start jobs through `execute()` and nothing else does."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.context import Fire
from runner.enums import RunStatus, SkipReason, Trigger
from runner.errors import AlreadyRan, FilesVanished, NotClaimed, OverlapSkipped, Stopped, StorageError
from runner.models import utcnow
from runner.private import open_private, private_folder
from runner.runlog import RunLog
from runner.runlog import log_path as runlog_path
from runner.runplan import Attempt, Outcome, RunPlan, masked_params
from runner.settings import Overlap
from runner.stopsignals import StopSignals, signame
from runner.store import RunEnd
from runner.supervise import Child, Verdict
from runner.terminal import LiveTerminal

if TYPE_CHECKING:
    from datetime import datetime

    from runner.containment import Containment
    from runner.jobapi import JobSpec
    from runner.settings import RunnerSettings, Settings
    from runner.store import RunRecord, Store

log = logging.getLogger("runner.execution")

QUEUE_POLL_S = 1.0
MAX_BACKOFF_S = 3600.0
RETRY_JITTER = 0.25  # a retry waits its backoff plus up to this fraction more, at random


def execute(
    spec: JobSpec,
    params: Mapping[str, Any],
    fire: Fire,
    *,
    settings: RunnerSettings,
    store: Store,
    live: bool = False,
    reap: bool = True,
    resume: RunRecord | None = None,
) -> Outcome:
    """Run one fire of a job to its end. Raises AlreadyRan or OverlapSkipped (exit 3) if not started.

    Before the job body starts there is one transaction (claim the fire, take the lease, mark the
    run running); after it ends, one more (record the outcome, release the lease). `resume` is
    the row of a retry a stop cut short: that attempt runs now, in that row.
    """
    if not gc.isenabled():  # the CLI starts with collections off; the job gets them back
        gc.freeze()
        gc.enable()
    try:
        first, holder = _claim(spec, params, fire, settings, store, live, reap, resume)
        outcome = _run_attempts(first, holder)
    except (AlreadyRan, OverlapSkipped, Stopped):
        if fire.paths:  # not started (or stopped while queued): its files go back, untouched
            store.files.settle(spec.name, fire.key, succeeded=False, started=False)
        raise
    if fire.paths:
        from runner.outage import patiently

        # With ctx.files() the job acknowledged each file it finished; the rest go back. (If the
        # database stays away, the next rescan settles them by the run's recorded status.)
        finished = outcome.status is RunStatus.SUCCEEDED and not outcome.acked_files_only
        patiently(
            lambda: store.files.settle(
                spec.name, fire.key, succeeded=finished, blame=outcome.file_in_progress
            ),
            settings.lock_timeout_s,
        )
    if spec.alerts is not None:  # the run is recorded: its result ping and notifications
        from runner.notify import after_run

        after_run(first.plan, outcome)
    return outcome


def _claim(
    spec: JobSpec,
    params: Mapping[str, Any],
    fire: Fire,
    settings: RunnerSettings,
    store: Store,
    live: bool,
    reap: bool,
    resume: RunRecord | None,
) -> tuple[Attempt, RunRecord | None]:
    """Everything before the job may start: the database's chores, then the claim (`_start`).
    A database failure here is NotClaimed: the fire is not ours, so it is still free."""
    from runner.spool import replay

    try:
        store.ensure_schema()
        replay(settings.var_dir, store)
        if reap:
            store.reap_lost(settings.stale_after_s)
        if fire.paths:
            fire = _drop_vanished(spec.name, fire, store)
        late_s = None
        if fire.scheduled_at is not None:
            late_s = max(0.0, (utcnow() - (fire.due_at or fire.scheduled_at)).total_seconds())
        plan = RunPlan(spec, params, fire, settings, store, live=live, late_s=late_s)
        return _start(plan, resume)
    except StorageError as exc:
        raise NotClaimed(exc) from None


def _start(plan: RunPlan, resume: RunRecord | None) -> tuple[Attempt, RunRecord | None]:
    """Claim the fire, or take up the stopped retry `resume`: the first attempt to run, and the
    run that holds the job's lease if another one does (it is then queued)."""
    store, settings = plan.store, plan.settings
    if resume is None:
        ttl_s = settings.stale_after_s if plan.lease_job else None
        run_id, holder = store.claim(**plan.claim_values(), lease_ttl_s=ttl_s)
        return Attempt(plan, run_id=run_id, first_run_id=run_id, number=1), holder
    store.requeue(resume)
    attempt = Attempt(
        plan, run_id=resume.id, first_run_id=resume.first_run_id or resume.id, number=resume.attempt
    )
    holder = None
    if plan.lease_job:
        holder = store.leases.acquire(plan.spec.name, resume.id, settings.stale_after_s)
    return attempt, holder


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
    store.record_skipped(job, fire.kind, [(fire.key, None)], SkipReason.VANISHED, error)
    raise FilesVanished(f"job {job}: not started: {error}")


def _run_attempts(attempt: Attempt, holder: RunRecord | None) -> Outcome:
    plan = attempt.plan
    spec, store, settings = plan.spec, plan.store, plan.settings
    with StopSignals() as stops:
        if holder is not None:
            _wait_for_lease(attempt, holder, stops)
        if spec.alerts is not None and spec.alerts.ping_url:  # once a run, before its first attempt
            from runner.pings import ping_start

            ping_start(plan, attempt.run_id)
        while True:
            outcome = _attempt(attempt, stops)
            if outcome.status is RunStatus.SUCCEEDED or outcome.stop_signal or attempt.final:
                if plan.lease_job and not attempt.final:
                    store.leases.release(spec.name, attempt.run_id)
                return outcome
            attempt = _retry(attempt)
            delay = retry_delay(spec.retry_backoff_s, attempt.number - 1)
            _say(
                plan.live,
                f"run {outcome.run_id} {outcome.status}: {outcome.error}; "
                f"retry {attempt.number - 1}/{spec.retries} as run {attempt.run_id} in {delay:.1f}s",
            )
            beat = partial(store.heartbeat, attempt.run_id, plan.lease_job, settings.stale_after_s)
            if not _wait(delay, stops, beat, settings.heartbeat_s):
                return _stopped_before_retry(attempt, stops)


def _retry(failed: Attempt) -> Attempt:
    """The next attempt's row (queued), which the lease moves to."""
    plan = failed.plan
    number = failed.number + 1
    run_id, _ = plan.store.claim(
        **{**plan.claim_values(), "late_s": None},
        attempt=number,
        first_run_id=failed.first_run_id,
        status=RunStatus.QUEUED,
    )
    if plan.lease_job:
        plan.store.leases.move(plan.spec.name, failed.run_id, run_id)
    return Attempt(plan, run_id=run_id, first_run_id=failed.first_run_id, number=number)


def _stopped_before_retry(attempt: Attempt, stops: StopSignals) -> Outcome:
    plan = attempt.plan
    error = f"stopped by {signame(stops.received)} before the retry started"
    # A scheduled fire's retry is taken up again by the next daemon (within catchup).
    resumable = plan.fire.kind is Trigger.SCHEDULE
    plan.store.finish(
        attempt.run_id,
        RunEnd(
            status=RunStatus.KILLED,
            ended_at=utcnow(),
            error=error,
            reason=SkipReason.RETRY_STOPPED if resumable else None,
        ),
        release_lease_of=plan.lease_job,
    )
    return Outcome(
        run_id=attempt.run_id,
        first_run_id=attempt.first_run_id,
        attempts=attempt.number,
        status=RunStatus.KILLED,
        exit_code=None,
        signal=None,
        error=error,
        result=None,
        log_path=None,
        duration_s=0.0,
        stop_signal=stops.received,
    )


def execute_configured(
    settings: Settings,
    store: Store,
    job: str,
    fire: Fire,
    *,
    live: bool = False,
    reap: bool = True,
    resume: RunRecord | None = None,
) -> Outcome:
    """A scheduled, cron or file fire: the job's parameters come from its INI section alone."""
    spec, params = configured_job(settings, job)
    return execute(
        spec, params, fire, settings=settings.runner, store=store, live=live, reap=reap, resume=resume
    )


def configured_job(settings: Settings, job: str) -> tuple[JobSpec, dict[str, Any]]:
    """The job's function and its parameters from its INI section; BrokenJob, ConfigError,
    ParamError or UnknownJob when its code or its section cannot give them."""
    from runner.discovery import config_origin, find_job
    from runner.params import bind

    spec = find_job(settings, job)
    params = bind(
        job, spec.params, [(config_origin(settings, job), spec.config_params)], base_dir=settings.path.parent
    )
    return spec, params


def record_broken(store: Store, job: str, fire: Fire, error: str) -> None:
    """A daemon's fire of a job whose code does not load (its module fails to import, its `uses =`
    function is gone): nothing runs; the fire is recorded failed with the reason, so the history,
    `runner status` and alerts show it, and its files (a file event) wait for a fixed job."""
    with contextlib.suppress(AlreadyRan):  # somebody ran it after all
        store.claim(
            job=job,
            fire_key=fire.key,
            trigger=fire.kind,
            scheduled_at=fire.scheduled_at,
            late=fire.late,
            paths=[str(p) for p in fire.paths] or None,
            status=RunStatus.FAILED,
            error=f"not run: the job's code is broken: {error}",
            reason=SkipReason.BROKEN,
        )
    if fire.paths:
        store.files.settle(job, fire.key, succeeded=False, started=False)


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
            reason=reason,
        )


def retry_delay(backoff_s: float, retry_number: int) -> float:
    """Exponential backoff (capped at an hour), never shorter than the setting: the jitter that
    spreads retries of many jobs comes on top, up to RETRY_JITTER of the backoff."""
    delay = min(MAX_BACKOFF_S, backoff_s * 2 ** (retry_number - 1))
    return delay + random.uniform(0, delay * RETRY_JITTER)


def _wait_for_lease(attempt: Attempt, holder: RunRecord | None, stops: StopSignals) -> None:
    """overlap = skip: record the run skipped and raise; overlap = queue: wait for the lease."""
    plan = attempt.plan
    spec, store, settings, run_id = plan.spec, plan.store, plan.settings, attempt.run_id
    if spec.overlap == Overlap.SKIP:
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
                    error=f"stopped by {signame(stops.received)} while queued",
                ),
            )
            raise Stopped(
                f"job {spec.name}: stopped by {signame(stops.received)} while waiting for run {holder.id}",
                stops.received or signal.SIGTERM,
            )
        store.reap_lost(settings.stale_after_s)
        holder = store.leases.acquire(spec.name, run_id, settings.stale_after_s)


def _wait(seconds: float, stops: StopSignals, heartbeat: Callable[[], object], every_s: float) -> bool:
    """Sleep, heartbeating; False if a stop signal arrived."""
    end = time.monotonic() + seconds
    next_beat = time.monotonic() + every_s
    while (left := end - time.monotonic()) > 0:
        if stops.wait(min(left, max(0.0, next_beat - time.monotonic()))):
            return False
        if time.monotonic() >= next_beat:
            with contextlib.suppress(StorageError):  # the database is away: skip this beat
                heartbeat()
            next_beat = time.monotonic() + every_s
    return not stops.received


def _attempt(attempt: Attempt, stops: StopSignals) -> Outcome:
    """Run one attempt: fork the job, supervise it to its end, record how it ended."""
    from runner.containment import Containment

    plan = attempt.plan
    spec, settings = plan.spec, plan.settings
    started = utcnow()
    log_path = run_log_path(settings, spec.name, attempt.run_id, started)
    if attempt.number > 1:  # the first attempt's row was marked running when it was claimed
        plan.store.start(attempt.run_id, started)
    containment = Containment.create(cgroup=settings.contain == "cgroup")
    terminal = LiveTerminal(sys.stderr) if plan.live else None
    child = _spawn(attempt, log_path, containment, terminal)
    child.supervise(
        timeout_s=spec.timeout_s,
        grace_s=settings.kill_grace_s,
        heartbeat=_heartbeat(attempt, child),
        heartbeat_s=settings.heartbeat_s,
        stops=stops,
        tail=terminal,
    )
    return _record(attempt, child.verdict(spec.timeout_s), started, log_path, stops)


def _spawn(
    attempt: Attempt, log_path: Path, containment: Containment, terminal: LiveTerminal | None
) -> Child:
    """Open the run log (its first line says what runs) and fork the attempt's processes. A log
    that cannot be written fails the run: StorageError."""
    from runner.spool import record_outcome

    plan = attempt.plan
    spec, settings = plan.spec, plan.settings
    try:
        private_folder(log_path.parent.parent)  # job output may hold secrets: 0700, files 0600
        private_folder(log_path.parent)
        started_line = (
            f"run {attempt.run_id} of job {spec.name} started: attempt {attempt.number}, "
            f"trigger {plan.fire.kind}, fire {plan.fire.key}, params {masked_params(plan.params)!r}"
        )
        _append(log_path, started_line)
        if terminal is not None:  # the started line goes above any progress bar
            terminal.write(log_path.read_text(encoding="utf-8", errors="replace"))
        max_log_bytes = settings.max_log_bytes if spec.max_log_bytes is None else spec.max_log_bytes
        runlog = RunLog(log_path, max_log_bytes, tail=terminal)
        return Child.spawn(attempt, runlog, containment)
    except OSError as exc:  # a full or read-only log folder: the job cannot start
        containment.close()
        error = f"cannot write the run log {log_path}: {exc.strerror or exc}"
        record_outcome(
            plan.store,
            settings.var_dir,
            attempt.run_id,
            RunEnd(status=RunStatus.FAILED, ended_at=utcnow(), error=error),
            release_lease_of=plan.lease_job,
            patience_s=settings.lock_timeout_s,
        )
        raise StorageError(f"job {spec.name}: {error}; run {attempt.run_id} is recorded failed") from None


def _heartbeat(attempt: Attempt, child: Child) -> Callable[[], bool]:
    """The supervisor's heartbeat; never waits for the database (False: it was busy, try again)."""
    plan = attempt.plan
    # The first beat records where the job's processes are, for whoever reaps a dead supervisor
    # (a run that ends sooner never needs it: its group leader kills them if the supervisor dies).
    cgroup = child.containment.cgroup
    unrecorded = {"job_pid": child.pid, "cgroup": str(cgroup) if cgroup else None}

    def heartbeat() -> bool:
        extra = unrecorded.copy()
        if plan.store.heartbeat(
            attempt.run_id, plan.lease_job, plan.settings.stale_after_s, wait=False, **extra
        ):
            unrecorded.clear()
            return True
        return False

    return heartbeat


def _record(
    attempt: Attempt, verdict: Verdict, started: datetime, log_path: Path, stops: StopSignals
) -> Outcome:
    """The attempt's last log line and its row (kept on disk if the database will not take it)."""
    from runner.spool import record_outcome

    plan = attempt.plan
    ended = utcnow()
    duration = (ended - started).total_seconds()
    status, error = verdict.status, verdict.error
    with contextlib.suppress(OSError):  # a full disk must not change what is recorded
        _append(
            log_path, f"run {attempt.run_id} {status} in {duration:.2f}s" + (f": {error}" if error else "")
        )
    record_outcome(
        plan.store,
        plan.settings.var_dir,
        attempt.run_id,
        RunEnd(
            status=status,
            ended_at=ended,
            exit_code=verdict.exit_code,
            signal=verdict.signal,
            error=error,
            result=verdict.result,
            log_path=str(log_path),
        ),
        release_lease_of=plan.lease_job if attempt.final else None,
        patience_s=plan.settings.lock_timeout_s,
    )
    return Outcome(
        run_id=attempt.run_id,
        first_run_id=attempt.first_run_id,
        attempts=attempt.number,
        status=status,
        exit_code=verdict.exit_code,
        signal=verdict.signal,
        error=error,
        result=verdict.result,
        log_path=log_path,
        duration_s=duration,
        stop_signal=stops.received if status is RunStatus.KILLED else None,
        acked_files_only=verdict.acked_files_only,
        file_in_progress=verdict.file_in_progress,
    )


def run_log_path(settings: RunnerSettings, job: str, run_id: int, started: datetime) -> Path:
    return runlog_path(settings.log_dir, job, run_id, started)


def _append(path: Path, line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8") as handle:
        handle.write(f"{stamp} runner: {line}\n")


def _say(live: bool, message: str) -> None:
    log.warning(message)
    if live:
        print(f"runner: {message}", file=sys.stderr, flush=True)
