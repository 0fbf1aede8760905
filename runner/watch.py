"""File events: a folder's complete file versions, each handed to the job once (watchdog glue).

A file is ready when it was closed after writing (inotify close-write) or moved into the folder;
where no close event comes (polling mode, files found by a rescan, some writers) when its size and
mtime have not changed for `settle` and nobody holds it open. Temporary names (`*.part`, `*.tmp`,
dot files) are ignored, so a writer that renames into place fires once, under the final name.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.settings import WatchSettings

log = logging.getLogger("runner.watch")

HELD_RESCAN_S = 15.0  # rescan this soon while other runs still hold some of the files
OPEN_STALE_S = 600.0  # an 'open' whose close we never saw stops blocking after this long
BUSY_RECHECK_S = 0.05  # while every worker is busy, how often to look for a free one
MARKER_PREFIX = ".runner-overflow-"  # a file we create and delete to mark a point in the event stream
WATCH_LIMIT_HELP = (
    "the inotify watch limit is reached; raise it with "
    "`sudo sysctl fs.inotify.max_user_watches=524288` (and in /etc/sysctl.d/ to keep it), "
    "or set watch_mode = polling for this job"
)


@dataclass(frozen=True, slots=True)
class FileVersion:
    path: str
    size: int
    mtime_ns: int


def version_of(path: str, settings: WatchSettings | None = None) -> FileVersion | None:
    """The file's identity now, or None if it is gone or is not a regular file.

    A job is never handed a symlink (to /etc/shadow, out of the folder, to a folder), a fifo, a
    socket or a device: only with `follow_symlinks` a link whose target is a regular file inside
    a watched folder counts, described by its target's size and mtime."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode) and settings is not None and settings.follow_symlinks:
        target = os.path.realpath(path)
        if not any(_inside(target, folder) for folder in settings.folders):
            return None
        try:
            st = os.stat(target)
        except OSError:
            return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return FileVersion(path, st.st_size, st.st_mtime_ns)


def _inside(target: str, folder: Path) -> bool:
    root = os.path.realpath(folder)
    return target.startswith(root.rstrip("/") + "/")


def scan(settings: WatchSettings) -> Iterator[FileVersion]:
    """Every wanted file in the watched folders now."""
    for folder in settings.folders:
        yield from _scan_folder(str(folder), settings)


def _scan_folder(folder: str, settings: WatchSettings) -> Iterator[FileVersion]:
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        log.warning("cannot list %s: %s", folder, exc)
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if settings.recursive and not any(fnmatch.fnmatch(entry.name, p) for p in settings.ignore):
                yield from _scan_folder(entry.path, settings)
            continue
        if settings.wants(entry.path) and not entry.name.startswith(MARKER_PREFIX):
            version = version_of(entry.path, settings)
            if version is not None:
                yield version


def mark_event_stream(settings: WatchSettings) -> None:
    """watchdog reports an overflow at once, while events read before it still wait in its queues:
    an 'opened' among them, whose 'closed' the overflow lost, would arrive after our reset. A file
    created (and deleted) now reaches the handler after all of them, which resets open counts
    again, however late that is."""
    for folder in settings.folders:
        marker = folder / f"{MARKER_PREFIX}{os.getpid()}"
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            os.unlink(marker)
        except OSError as exc:  # a read-only folder: the reset at the overflow is all we have
            log.warning("cannot mark the event stream in %s: %s", folder, exc)


def check_folders(settings: WatchSettings) -> str | None:
    """A one-line problem with the watched folders, or None."""
    for folder in settings.folders:
        if not folder.is_dir():
            return f"{folder} is not a folder (create it, or fix `watch`)"
        if not os.access(folder, os.R_OK | os.X_OK):
            return f"{folder} is not readable by this user"
    return None


@dataclass(slots=True)
class _Candidate:
    size: int
    mtime_ns: int
    since: float  # when size/mtime last changed
    closed: bool = False  # closed after writing, or moved in: complete
    written: bool = False
    opens: int = 0
    opened_at: float = 0.0


@dataclass
class Tracker:
    """The files of one watch job that are not yet handed out, and when each becomes ready."""

    settings: WatchSettings
    pending: dict[str, _Candidate] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, kind: str, path: str, dest: str | None = None) -> None:
        now = time.monotonic()
        with self.lock:
            if kind == "moved":
                self.pending.pop(path, None)
                if dest and self.settings.wants(dest):
                    self._touch(dest, now, closed=True)
                return
            if not self.settings.wants(path):
                return
            if kind == "deleted":
                self.pending.pop(path, None)
            elif kind in ("created", "modified"):
                self._touch(path, now, written=True)
            elif kind == "opened":
                candidate = self.pending.get(path) or self._touch(path, now)
                if candidate:
                    candidate.opens += 1
                    candidate.opened_at = now
            elif kind == "closed":
                candidate = self._touch(path, now, closed=True)
                if candidate:
                    candidate.opens = max(0, candidate.opens - 1)
            elif kind == "closed_no_write":
                candidate = self.pending.get(path)
                if candidate:
                    candidate.opens = max(0, candidate.opens - 1)
                    if not candidate.written and not candidate.closed and candidate.opens == 0:
                        del self.pending[path]  # somebody (our job) only read it

    def _touch(
        self, path: str, now: float, *, closed: bool = False, written: bool = False
    ) -> _Candidate | None:
        version = version_of(path, self.settings)
        if version is None:
            self.pending.pop(path, None)
            return None
        candidate = self.pending.get(path)
        if candidate is None or (candidate.size, candidate.mtime_ns) != (version.size, version.mtime_ns):
            old = candidate
            candidate = _Candidate(version.size, version.mtime_ns, now)
            if old is not None:
                candidate.opens, candidate.opened_at, candidate.written = (
                    old.opens,
                    old.opened_at,
                    old.written,
                )
            self.pending[path] = candidate
        candidate.closed = candidate.closed or closed
        candidate.written = candidate.written or written
        return candidate

    def add_found(self, versions: list[FileVersion]) -> None:
        """Files a rescan listed: unseen ones become candidates that must settle."""
        now = time.monotonic()
        with self.lock:
            for version in versions:
                candidate = self.pending.get(version.path)
                if candidate is None:
                    self.pending[version.path] = _Candidate(version.size, version.mtime_ns, now)

    def reset_opens(self) -> None:
        """After lost events (queue overflow) open counts cannot be trusted: an 'opened' whose
        'closed' was lost would hold its file back for OPEN_STALE_S."""
        with self.lock:
            for candidate in self.pending.values():
                candidate.opens = 0

    def ready(self, now: float) -> tuple[list[FileVersion], float | None]:
        """(the files ready now, in arrival order; seconds until the next one may be)."""
        settle = self.settings.settle_s
        ready, wait = [], None
        with self.lock:
            for path, candidate in list(self.pending.items()):
                blocked = candidate.opens > 0 and now - candidate.opened_at < OPEN_STALE_S
                if blocked:
                    continue
                # closed after writing (or moved in) is complete now; otherwise it must settle
                due = candidate.since if candidate.closed else candidate.since + settle
                if due > now:
                    wait = due - now if wait is None else min(wait, due - now)
                    continue
                version = version_of(path, self.settings)
                if version is None:
                    del self.pending[path]
                elif (version.size, version.mtime_ns) != (candidate.size, candidate.mtime_ns):
                    self.pending[path] = _Candidate(version.size, version.mtime_ns, now, written=True)
                    wait = settle if wait is None else min(wait, settle)
                else:
                    ready.append(version)
        return ready, wait

    def forget(self, versions: list[FileVersion]) -> None:
        with self.lock:
            for version in versions:
                candidate = self.pending.get(version.path)
                if candidate and (candidate.size, candidate.mtime_ns) == (version.size, version.mtime_ns):
                    del self.pending[version.path]


class OverflowSignal(logging.Handler):
    """watchdog logs an inotify queue overflow but tells no handler; we listen to its log."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.on_overflow()


def start_observer(settings: WatchSettings, tracker: Tracker, wake: Callable[[], None]):
    """A running watchdog observer feeding `tracker`; raises RuntimeError with a clear line on failure."""
    from watchdog.events import FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:  # type: ignore[no-untyped-def]
            if event.is_directory:
                return
            src = os.fsdecode(event.src_path)
            if os.path.basename(src).startswith(MARKER_PREFIX):
                if event.event_type == "created":  # every event from before the overflow is in
                    tracker.reset_opens()
                    wake()
                return
            dest = os.fsdecode(event.dest_path) if event.event_type == "moved" else None
            tracker.event(event.event_type, src, dest)
            wake()

    if settings.mode == "polling":
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=max(0.2, min(1.0, settings.settle_s / 2 or 0.5)))
    else:
        from watchdog.observers import Observer

        observer = Observer()
    handler = Handler()
    try:
        for folder in settings.folders:
            observer.schedule(handler, str(folder), recursive=settings.recursive)
        observer.start()
    except OSError as exc:
        if exc.errno == errno.ENOSPC or "watch limit" in str(exc):
            raise RuntimeError(WATCH_LIMIT_HELP) from None
        raise RuntimeError(f"cannot watch {', '.join(map(str, settings.folders))}: {exc}") from None
    return observer


@dataclass
class _Watched:
    name: str
    settings: WatchSettings
    tracker: Tracker
    observer: object | None = None
    next_rescan: float = 0.0
    problem: str | None = None


class WatchService:
    """Turns the watched folders' events into claimed batches of files and hands them on.

    `claim(job, versions)` returns (fire key, claimed paths) after claiming in the database;
    `dispatch(job, fire_key, paths)` starts the run; `free_slots()` says how many more runs may
    start now (ready files wait, and form bigger batches, while the workers are busy);
    `release(job, gone)` frees the claims of runs that died without settling them (`gone`: fire
    keys whose supervisor worker died, see fire_gone); while `held()` (the database is away)
    nothing is claimed or released, and ready files wait.
    """

    RETRY_FOLDER_S = 30.0

    def __init__(self, jobs, claim, dispatch, free_slots, release, held=lambda: False) -> None:  # type: ignore[no-untyped-def]
        self.watched = [_Watched(name, job.watch, Tracker(job.watch)) for name, job in jobs]
        self.claim, self.dispatch, self.free_slots, self.release = claim, dispatch, free_slots, release
        self.held = held
        self._gone_lock = threading.Lock()
        self._gone: dict[str, set[str]] = {}  # job -> fire keys whose worker died, not yet released
        self._gone_news: set[str] = set()  # jobs with a fire in _gone not yet looked at
        self.wake_event = threading.Event()
        self.stopping = False
        self.overflowed = False
        self.thread: threading.Thread | None = None
        self.overflow_handler = OverflowSignal(self._on_overflow)

    def _on_overflow(self) -> None:
        self.overflowed = True
        self.wake_event.set()

    def wake(self) -> None:
        self.wake_event.set()

    def offer_again(self, job: str, paths: list[str]) -> None:
        """Files of a run that did not start: they become candidates again (and must settle)."""
        for watched in self.watched:
            if watched.name == job:
                watched.tracker.add_found(
                    [v for p in paths if (v := version_of(p, watched.settings)) is not None]
                )

    def fire_gone(self, job: str, fire_key: str) -> None:
        """The supervisor worker running this fire died: its claims are looked at now (released
        at once if its run never started, else as soon as the run is marked lost), not at the
        next rescan, which may be `rescan` (minutes) away."""
        with self._gone_lock:
            self._gone.setdefault(job, set()).add(fire_key)
            self._gone_news.add(job)
        self.wake_event.set()

    def start(self) -> None:
        """Start watching (events from now on are seen), then list what is already there."""
        if not self.watched:
            return
        logging.getLogger("watchdog").addHandler(self.overflow_handler)
        now = time.monotonic()
        for watched in self.watched:
            if self._ensure_observer(watched, now):
                self._rescan(watched, now)
        self.thread = threading.Thread(target=self._loop, name="watch", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.wake_event.set()
        for watched in self.watched:
            if watched.observer is not None:
                watched.observer.stop()  # type: ignore[attr-defined]
        if self.thread is not None:
            self.thread.join(timeout=5)
        logging.getLogger("watchdog").removeHandler(self.overflow_handler)

    def _ensure_observer(self, watched: _Watched, now: float) -> bool:
        if watched.observer is not None:
            return True
        if watched.problem and now < watched.next_rescan:
            return False
        problem = check_folders(watched.settings)
        if problem is None:
            try:
                watched.observer = start_observer(watched.settings, watched.tracker, self.wake)
            except RuntimeError as exc:
                problem = str(exc)
        if problem:
            if problem != watched.problem:
                log.error(
                    "job=%s cannot watch: %s; retrying every %.0fs",
                    watched.name,
                    problem,
                    self.RETRY_FOLDER_S,
                )
            watched.problem, watched.next_rescan = problem, now + self.RETRY_FOLDER_S
            return False
        if watched.problem:
            log.info("job=%s watching %s again", watched.name, ", ".join(map(str, watched.settings.folders)))
        watched.problem, watched.next_rescan = None, 0.0
        return True

    def _loop(self) -> None:
        while not self.stopping:
            try:
                wait = self._step()
            except Exception:  # a bug or a vanished folder must not end file events for good
                log.exception("watch loop failed; trying again in 1s")
                wait = 1.0
            self.wake_event.wait(max(0.0, wait))
            self.wake_event.clear()

    def _rescan(self, watched: _Watched, now: float) -> None:
        held = 0
        with self._gone_lock:
            gone = self._gone.pop(watched.name, set())
            self._gone_news.discard(watched.name)
        try:
            if not self.held():
                _released, held = self.release(watched.name, gone)
                gone = set()
        except Exception as exc:
            if not self.held():  # else the daemon has said the database is away, once
                log.warning("job=%s releasing stale claims failed: %s", watched.name, exc)
        watched.tracker.add_found(list(scan(watched.settings)))
        # Files another (or a dying) process still holds may come back soon: look again sooner.
        interval = (
            min(watched.settings.rescan_s, HELD_RESCAN_S) if held or gone else watched.settings.rescan_s
        )
        watched.next_rescan = now + interval
        if gone:  # not looked at (the database is away): kept for the next rescan
            with self._gone_lock:
                self._gone.setdefault(watched.name, set()).update(gone)

    def _has_gone_news(self, job: str) -> bool:
        with self._gone_lock:
            return job in self._gone_news

    def _step(self) -> float:
        now = time.monotonic()
        overflowed, self.overflowed = self.overflowed, False
        if overflowed:
            log.warning("inotify queue overflowed: events were lost; listing the watched folders again")
        wait: float = 1.0
        for watched in self.watched:
            if not self._ensure_observer(watched, now):
                continue
            if overflowed:
                watched.tracker.reset_opens()
                mark_event_stream(watched.settings)
            if overflowed or now >= watched.next_rescan or self._has_gone_news(watched.name):
                self._rescan(watched, now)
            next_due = self._hand_out(watched, now)
            wait = min(wait, 1.0 if next_due is None else next_due)
        return wait

    def _hand_out(self, watched: _Watched, now: float) -> float | None:
        if self.held():  # the database is away: ready files wait, unclaimed
            return 1.0
        if self.free_slots() <= 0:  # before ready(): it looks at every pending file (10,000 in a burst)
            return BUSY_RECHECK_S  # look again soon: a run will finish
        ready, wait = watched.tracker.ready(now)
        while ready:
            if self.free_slots() <= 0:
                return BUSY_RECHECK_S
            chunk, ready = ready[: watched.settings.batch], ready[watched.settings.batch :]
            try:
                fire_key, paths = self.claim(watched.name, chunk)
            except Exception as exc:  # the database may be restarting: keep the files pending
                if not self.held():  # else the daemon has said the database is away, once
                    log.warning("job=%s claiming %d files failed: %s", watched.name, len(chunk), exc)
                return 1.0
            watched.tracker.forget(chunk)
            if paths:
                self.dispatch(watched.name, fire_key, paths)
        return wait
