"""Retention: remove the runs and run logs beyond each job's `keep_runs` and `keep_logs`, for
`runner prune` and the daemon's prune thread.

Runs go in small batches, each its own short write transaction with a pause after it, so a fire
waiting for the write lock waits at most one batch (about TXN_TARGET_S). What is never removed is
decided in runner/store/prune.py. Logs are files: a job's folder holds a folder per day
(`JOB/YYYY-MM-DD/RUN_ID.log`), and older versions' logs lie in the job's folder itself; both are
pruned by age (when the file was last written) and by count (the newest by run id are kept), and
a day folder left empty is removed."""

from __future__ import annotations

import contextlib
import heapq
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from runner.enums import RunStatus, SkipReason
from runner.models import utcnow
from runner.runlog import DAY_FOLDER, DAY_FORMAT, LOG_FILE, find_log

if TYPE_CHECKING:
    from runner.settings import Retention, Settings
    from runner.store import Store
    from runner.store.prune import Candidate, Limit, Protected

BATCH_ROWS_START = 1000
BATCH_ROWS_MIN = 500
BATCH_ROWS_MAX = 5000
TXN_TARGET_S = 0.02  # a batch holds the write lock about this long: what a waiting fire may wait
PAUSE_MIN_S = 0.005  # after each batch, at least this (and as long as the batch took) for others
CHECKPOINT_EVERY_S = 5.0  # SQLite: fold the write-ahead log back in, outside the write lock
VACUUM_PAGES_START = 256  # SQLite pages handed back to the disk per write transaction: sized
VACUUM_PAGES_MIN = 64  # like the batches of runs
VACUUM_PAGES_MAX = 8192
_ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
CRON_LOG_FOLDER = "cron"  # log_dir/cron/JOB.log: what crontab lines print (runner/crontab.py)


@dataclass(slots=True)
class JobPruned:
    """What one job lost (or would lose, in a dry run)."""

    job: str
    keep_runs: str
    keep_logs: str
    runs: int = 0
    logs: int = 0
    log_bytes: int = 0
    counted: set[int] = field(default_factory=set, repr=False)  # dry run: logs counted with their run


@dataclass(slots=True)
class PruneReport:
    dry_run: bool
    now: datetime  # ages are counted back from here
    jobs: list[JobPruned] = field(default_factory=list)
    folders: int = 0  # day folders removed once empty
    seconds: float = 0.0
    released_bytes: int = 0  # SQLite pages given back to the disk
    free_bytes: int = 0  # SQLite pages still free inside the file (reused by new runs)
    note: str | None = None
    stopped: bool = False  # the daemon stopped before the prune was done

    @property
    def runs(self) -> int:
        return sum(job.runs for job in self.jobs)

    @property
    def logs(self) -> int:
        return sum(job.logs for job in self.jobs)

    @property
    def log_bytes(self) -> int:
        return sum(job.log_bytes for job in self.jobs)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        for job in data["jobs"]:
            del job["counted"]
        data.update(runs=self.runs, logs=self.logs, log_bytes=self.log_bytes)
        return data


class _Pacer:
    """Sizes each batch (rows, or pages) so that its transaction takes about TXN_TARGET_S, and
    pauses after it."""

    def __init__(
        self,
        pause: bool,
        start: int = BATCH_ROWS_START,
        low: int = BATCH_ROWS_MIN,
        high: int = BATCH_ROWS_MAX,
    ) -> None:
        self.rows, self.low, self.high = start, low, high
        self.pause = pause

    def done(self, rows: int, elapsed_s: float) -> None:
        if rows >= self.rows // 2 and elapsed_s > 0:
            wanted = int(rows * TXN_TARGET_S / elapsed_s)
            self.rows = max(self.low, min(self.high, wanted, self.rows * 2))
        if self.pause:
            time.sleep(max(PAUSE_MIN_S, elapsed_s))


def prune_store(settings: Settings) -> Store:
    """A store of its own for pruning: its commits never checkpoint SQLite's log while holding the
    write lock (prune checkpoints between batches instead)."""
    from runner.store import Store

    runner = settings.runner
    return Store(
        runner.database,
        autocheckpoint=False,
        lock_timeout_s=runner.lock_timeout_s,
        data_url=runner.data_database,
    )


def prune(
    settings: Settings,
    store: Store,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> PruneReport:
    """Apply every job's keep_runs and keep_logs (a job no longer configured: [runner]'s)."""
    now = now or utcnow()
    started = time.monotonic()
    report = PruneReport(dry_run, now)
    store.ensure_schema()
    log_dir = settings.runner.log_dir
    in_history = store.pruning.jobs()
    protected = store.pruning.protected(in_history)
    entries: dict[str, JobPruned] = {}
    keep_logs: dict[str, Retention] = {}
    limits: dict[str, Limit] = {}
    for job in sorted(set(in_history) | set(settings.jobs) | set(_log_folders(log_dir))):
        configured = settings.jobs.get(job)
        runs_kept = configured.keep_runs if configured else settings.runner.keep_runs
        keep_logs[job] = configured.keep_logs if configured else settings.runner.keep_logs
        entries[job] = JobPruned(job, str(runs_kept), str(keep_logs[job]))
        if job in in_history and not runs_kept.forever:
            limit = _limit(store, job, runs_kept, now)
            if limit.upto_id is not None or limit.older_than is not None:
                limits[job] = limit
    if limits:
        report.folders += _prune_runs(store, limits, protected, entries, log_dir, stopping, dry_run)
    for job, pruned in entries.items():
        if stopping():
            break
        if not keep_logs[job].forever and (log_dir / job).is_dir():
            report.folders += _prune_logs(log_dir / job, keep_logs[job], now, protected, pruned, dry_run)
    report.jobs = list(entries.values())
    report.stopped = stopping()
    if not dry_run and not report.stopped:
        _release_space(store, report, stopping)
    report.seconds = time.monotonic() - started
    return report


def _log_folders(log_dir: Path) -> list[str]:
    """Job folders under log_dir (a job no longer configured, nor in the history, has logs too);
    not `cron`, where crontab lines append their output (unless a job has that name)."""
    from runner.config import job_name_problem

    try:
        return [
            e.name
            for e in os.scandir(log_dir)
            if e.name != CRON_LOG_FOLDER and e.is_dir(follow_symlinks=False) and not job_name_problem(e.name)
        ]
    except OSError:
        return []


# --- runs ---------------------------------------------------------------------------------------


def _limit(store: Store, job: str, keep: Retention, now: datetime) -> Limit:
    from runner.store.prune import Limit

    return Limit(
        store.pruning.count_bound(job, keep.max_count) if keep.max_count is not None else None,
        now - timedelta(seconds=keep.max_age_s) if keep.max_age_s is not None else None,
    )


def _prune_runs(
    store: Store,
    limits: dict[str, Limit],
    protected: Protected,
    entries: dict[str, JobPruned],
    log_dir: Path,
    stopping: Callable[[], bool],
    dry_run: bool,
) -> int:
    """Remove the runs over their job's limits, and their logs, walking the history once in id
    order; returns the day folders emptied."""
    from runner.store.prune import over_limits

    pruning = store.pruning
    pacer = _Pacer(pause=not dry_run)
    over = over_limits(limits)  # built once: it has a term for every job

    def removable(run: Candidate) -> bool:
        return (
            run.over
            and run.id not in protected.run_ids
            and (run.job, run.fire_key) not in protected.fires
            and run.status not in _ACTIVE
            and run.reason != SkipReason.RETRY_STOPPED
        )

    after = 0
    days: set[str] = set()  # day folders that lost a log: removed at the end if empty
    checkpointed = time.monotonic()
    while not stopping():
        batch = pruning.candidates(over, after=after, limit=pacer.rows)
        if not batch:
            break
        after = batch[-1].id
        fires: dict[int, list[Candidate]] = {}
        for run in (*batch, *pruning.other_attempts(batch, over)):
            fires.setdefault(run.group, []).append(run)
        doomed = [run for attempts in fires.values() if all(map(removable, attempts)) for run in attempts]
        logs = _logs_of(store, log_dir, doomed)
        if dry_run:
            for run in doomed:
                entries[run.job].runs += 1
            for run, path in logs:
                with contextlib.suppress(OSError):
                    entries[run.job].log_bytes += os.stat(path).st_size
                    entries[run.job].logs += 1
                    entries[run.job].counted.add(run.id)  # only ids of existing files: bounded by the logs
            continue
        began = time.monotonic()
        removed = pruning.delete(sorted(run.id for run in doomed))
        elapsed = time.monotonic() - began
        if removed == len(doomed):
            for run in doomed:
                entries[run.job].runs += 1
        else:  # some became active meanwhile: count what is gone
            still = set(pruning.existing([run.id for run in doomed]))
            doomed = [run for run in doomed if run.id not in still]
            logs = [(run, path) for run, path in logs if run.id not in still]
            for run in doomed:
                entries[run.job].runs += 1
        for run, path in logs:  # a log whose run is gone can no longer be asked for
            _remove_log(path, entries[run.job], days)
        pacer.done(len(batch), elapsed)
        if time.monotonic() - checkpointed >= CHECKPOINT_EVERY_S:
            store.checkpoint()
            checkpointed = time.monotonic()
    emptied = 0
    for day in days:
        with contextlib.suppress(OSError):
            os.rmdir(day)
            emptied += 1
    return emptied


def _logs_of(store: Store, log_dir: Path, doomed: list[Candidate]) -> list[tuple[Candidate, str]]:
    """(run, log file) of these runs: the file their row names, if it is named for the run (the
    row is not trusted to name anything else), or where it would be for a row that names none."""
    logs = [(run, run.log_path) for run in doomed if run.log_path]
    logs = [(run, path) for run, path in logs if os.path.basename(path) == f"{run.id}.log"]
    unnamed = {run.id: run for run in doomed if not run.log_path}
    if unnamed:
        for run_id, started in store.pruning.started_at(list(unnamed)).items():
            run = unnamed[run_id]
            logs.append((run, str(find_log(log_dir, run.job, run_id, started))))
    return logs


def _remove_log(path: str, pruned: JobPruned, days: set[str]) -> None:
    try:
        size = os.stat(path).st_size
        os.unlink(path)
    except OSError:
        return
    pruned.logs += 1
    pruned.log_bytes += size
    folder = os.path.dirname(path)
    if DAY_FOLDER.fullmatch(os.path.basename(folder)):
        days.add(folder)


# --- logs ---------------------------------------------------------------------------------------


def _prune_logs(
    job_dir: Path, keep: Retention, now: datetime, protected: Protected, pruned: JobPruned, dry_run: bool
) -> int:
    """Remove the job's log files beyond `keep` (newest first: day folders, then the files of
    older versions in the job's folder itself); returns how many day folders were removed."""
    cutoff = now - timedelta(seconds=keep.max_age_s) if keep.max_age_s is not None else None
    cutoff_ts = cutoff.timestamp() if cutoff else None
    kept = 0
    folders = 0
    for day in sorted(_day_folders(job_dir), key=lambda e: e.name, reverse=True):
        day_start = datetime.strptime(day.name, DAY_FORMAT).replace(tzinfo=UTC)
        all_old = cutoff is not None and day_start + timedelta(days=1) <= cutoff
        some_old = cutoff is not None and day_start < cutoff
        for run_id, entry in sorted(_log_files(day.path), reverse=True):
            newest = kept == 0
            over_count = keep.max_count is not None and kept >= keep.max_count
            too_old = all_old or (some_old and _mtime(entry) < cutoff_ts)
            if newest or run_id in protected.active_ids or not (over_count or too_old):
                kept += 1
            else:
                _drop(entry, pruned, dry_run)
        if not dry_run:
            with contextlib.suppress(OSError):
                os.rmdir(day.path)
                folders += 1
    _prune_flat_logs(job_dir, keep, cutoff_ts, kept, protected, pruned, dry_run)
    return folders


def _prune_flat_logs(
    job_dir: Path,
    keep: Retention,
    cutoff_ts: float | None,
    kept: int,
    protected: Protected,
    pruned: JobPruned,
    dry_run: bool,
) -> None:
    """Logs of versions before day folders, JOB/RUN_ID.log, all older than any day folder's: the
    newest that the count still allows stay (found in memory bounded by the count)."""
    room = None if keep.max_count is None else max(0, keep.max_count - kept)
    newest = None if kept else max((run_id for run_id, _ in _log_files(job_dir)), default=None)
    keep_ids = set(heapq.nlargest(room, (run_id for run_id, _ in _log_files(job_dir)))) if room else set()
    for run_id, entry in _log_files(job_dir):
        over_count = room is not None and run_id not in keep_ids
        too_old = cutoff_ts is not None and _mtime(entry) < cutoff_ts
        if run_id != newest and run_id not in protected.active_ids and (over_count or too_old):
            _drop(entry, pruned, dry_run)


def _day_folders(job_dir: Path) -> list[os.DirEntry[str]]:
    try:
        return [
            e for e in os.scandir(job_dir) if DAY_FOLDER.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
        ]
    except OSError:
        return []


def _log_files(folder: str | Path) -> Iterator[tuple[int, os.DirEntry[str]]]:
    """(run id, entry) of each RUN_ID.log file in `folder`, streamed."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            found = LOG_FILE.fullmatch(entry.name)
            if found and entry.is_file(follow_symlinks=False):
                yield int(found.group(1)), entry


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return float("inf")  # gone already: nothing to remove


def _drop(entry: os.DirEntry[str], pruned: JobPruned, dry_run: bool) -> None:
    if dry_run and int(LOG_FILE.fullmatch(entry.name).group(1)) in pruned.counted:
        return  # counted already, with its run
    try:
        size = entry.stat(follow_symlinks=False).st_size
        if not dry_run:
            os.unlink(entry.path)
    except OSError:
        return
    pruned.logs += 1
    pruned.log_bytes += size


# --- space --------------------------------------------------------------------------------------


def _release_space(store: Store, report: PruneReport, stopping: Callable[[], bool]) -> None:
    """SQLite: hand the freed pages back to the disk, a few at a time (incremental auto-vacuum);
    a file made before that was the default says how much it keeps, and how to convert it."""
    store.checkpoint()
    mode, free, page_size = store.pruning.free_pages()
    incremental = 2
    if mode == incremental:
        pacer = _Pacer(pause=True, start=VACUUM_PAGES_START, low=VACUUM_PAGES_MIN, high=VACUUM_PAGES_MAX)
        checkpointed = time.monotonic()
        while free > 0 and not stopping():
            step = min(free, pacer.rows)
            began = time.monotonic()
            store.pruning.release_pages(step)
            pacer.done(step, time.monotonic() - began)
            free -= step
            report.released_bytes += step * page_size
            if time.monotonic() - checkpointed >= CHECKPOINT_EVERY_S:
                store.checkpoint()
                checkpointed = time.monotonic()
        store.checkpoint()
    report.free_bytes = free * page_size
    if mode != incremental and free:
        report.note = (
            f"{free * page_size} bytes of the database file are free and are reused by new runs; "
            "`runner db vacuum` (once, while nothing runs) makes later prunes give them back to the disk"
        )
