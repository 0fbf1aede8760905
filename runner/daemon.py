"""`runner daemon`: APScheduler 3 fires the INI's schedules; every fire goes through the one
execution path, in a supervisor worker of the fork server (see runner.forkserver)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runner.config import Settings, load_settings
from runner.context import Fire
from runner.errors import EXIT_NOT_STARTED, EXIT_STORAGE, EXIT_USAGE, RunnerError
from runner.forkserver import ForkServer
from runner.models import Trigger, utcnow
from runner.spool import replay
from runner.triggers import fire_key

log = logging.getLogger("runner.daemon")

FORKSERVER_STOP_ESCALATE_S = 0.5
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PR_SET_PDEATHSIG = 1


# --- the daemon -------------------------------------------------------------------------------------


class Daemon:
    """Schedules every job of the config with APScheduler and dispatches fires to the fork server."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.settings = load_settings(config_path)
        self.stop_signal: int | None = None
        self.hurry = False  # a second SIGTERM or Ctrl-C: kill running jobs now
        self.reload_requested = False
        self._wake = threading.Event()
        self._stopping = False
        self._pool: ThreadPoolExecutor | None = None
        self.server = ForkServer(config_path)
        self.scheduler: Any = None
        self.watches: Any = None
        self.daemon_id: int | None = None
        self.exit_code = 0

    # -- life cycle --
    def run(self) -> int:
        from runner.discovery import discover
        from runner.store import Store
        from runner.systemd import notify, watchdog_interval_s

        catalog = discover(self.settings)
        for name, reason in catalog.broken.items():
            log.error("job %s is broken and will not fire: %s", name, reason)
        self.store = Store(
            self.settings.runner.database,
            lock_timeout_s=self.settings.runner.lock_timeout_s,
            data_url=self.settings.runner.data_database,
        )
        self.store.ensure_schema()
        self.store.engine.dispose()
        self.database_identity = self.store.file_identity()  # SQLite: the file we opened
        self.server.start()  # forks before any thread exists, then starts its reply reader
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self._pool = ThreadPoolExecutor(self.settings.runner.max_workers, thread_name_prefix="fire")
        for _ in range(self.settings.runner.max_workers):  # start the threads before the first fire
            self._pool.submit(time.sleep, 0.01)
        self._catch_up()
        self._start_scheduler()
        self._start_watches()
        self.daemon_id = self.store.register_daemon(str(self.config_path))  # `runner status`: up
        jobs = self._scheduled_names() + [
            f"{n} (watch)" for n, j in sorted(self.settings.jobs.items()) if j.watch
        ]
        notify("READY=1\nSTATUS=firing " + ", ".join(jobs))
        log.info(
            "daemon %s ready: pid %s, jobs: %s",
            self.daemon_id,
            os.getpid(),
            ", ".join(jobs) or "none",
        )
        beat_s = self.settings.runner.heartbeat_s
        watchdog_s = watchdog_interval_s()
        if watchdog_s:
            beat_s = min(beat_s, watchdog_s)
        while self.stop_signal is None:
            self._wake.wait(beat_s)
            self._wake.clear()
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            if self._database_replaced():
                break
            self._heartbeat()
            if watchdog_s:
                notify("WATCHDOG=1")
        notify("STOPPING=1")
        return self._shutdown()

    def _on_stop(self, signum: int, _frame: Any) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        else:
            self.hurry = True
        self._wake.set()

    def _on_reload(self, _signum: int, _frame: Any) -> None:
        self.reload_requested = True
        self._wake.set()

    def _database_replaced(self) -> bool:
        """A SQLite file deleted or replaced under us: we would go on recording into the old one,
        unseen. Stop, failing, so that the service manager starts us again on the file now there."""
        problem = self.store.file_replaced(self.database_identity)
        if problem is None:
            return False
        log.error(
            "%s; stopping with exit code %d so the daemon restarts on the new file", problem, EXIT_STORAGE
        )
        self.exit_code = EXIT_STORAGE
        return True

    def _heartbeat(self) -> None:
        try:
            self.store.daemon_heartbeat(self.daemon_id)
            self.store.checkpoint()
            replay(self.settings.runner.var_dir, self.store)  # outcomes kept while the database was away
            lost = self.store.reap_lost(self.settings.runner.stale_after_s)
            if lost:
                log.warning("marked lost (their supervisor is gone): runs %s", ", ".join(map(str, lost)))
        except Exception as exc:  # the database may be restarting: keep scheduling
            log.warning("heartbeat failed: %s", exc)

    def _shutdown(self) -> int:
        grace = self.settings.runner.shutdown_grace_s
        log.info(
            "stopping: no new fires; waiting up to %.0fs for %d running job(s) (%s again kills them now)",
            grace,
            self.server.in_flight,
            "Ctrl-C" if self.stop_signal == signal.SIGINT else "the same signal",
        )
        self._stopping = True
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.watches is not None:
            self.watches.stop()
        reserve = min(2.0, grace / 4)
        deadline = time.monotonic() + max(0.0, grace - reserve)
        while self.server.in_flight and time.monotonic() < deadline and not self.hurry:
            time.sleep(0.1)
        if self.server.in_flight:
            log.warning("shutdown_grace is over: killing %d running job(s)", self.server.in_flight)
        self.server.stop(timeout_s=reserve + self.settings.runner.kill_grace_s + 5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.exit_code == EXIT_STORAGE:  # the database file now at the path holds no row of ours
            removed = self.store.drop_old_wal()
            if removed:
                log.warning("removed the old database file's log: %s", ", ".join(removed))
        else:
            with contextlib.suppress(Exception):
                self.store.daemon_heartbeat(self.daemon_id, stopped=True)
        log.info("daemon %s stopped", self.daemon_id)
        return self.exit_code

    def _reload(self) -> None:
        from runner.discovery import discover
        from runner.systemd import notify

        notify("RELOADING=1")
        try:
            settings = load_settings(self.config_path)
            catalog = discover(settings)
            if catalog.errors:
                raise RunnerError(catalog.errors[0])
        except RunnerError as exc:
            log.error("reload failed, keeping the previous schedules: %s", exc)
            notify("READY=1")
            return
        except Exception:  # a bug must not take the running daemon down with it
            log.exception("reload failed, keeping the previous schedules")
            notify("READY=1")
            return
        previous = self.settings
        try:
            self._apply(settings)
        except Exception:
            log.exception("reload failed while applying it; going back to the previous schedules")
            self._apply(previous)
        else:
            log.info("reloaded %s: jobs %s", self.config_path, ", ".join(self._scheduled_names()) or "none")
        notify("READY=1")

    def _apply(self, settings: Settings) -> None:
        self.settings = settings
        self.server.command("reload")
        for job in self.scheduler.get_jobs():
            job.remove()
        self._add_jobs()
        if self.watches is not None:
            self.watches.stop()
        self._start_watches()

    # -- scheduling --
    def _scheduled_names(self) -> list[str]:
        return sorted(name for name, job in self.settings.jobs.items() if job.scheduled)

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": _DispatchExecutor(self)},
            job_defaults={"coalesce": True, "max_instances": 1_000_000, "misfire_grace_time": None},
        )
        self._add_jobs()
        self.scheduler.start()

    def _add_jobs(self) -> None:
        for name in self._scheduled_names():
            job = self.settings.jobs[name]
            self.scheduler.add_job(
                _noop, trigger=_ScheduleTrigger(job.schedules), id=name, name=name, replace_existing=True
            )

    def _catch_up(self) -> None:
        """Fires missed while no daemon ran: the newest one of each job runs once, marked late,
        if it is within the job's catchup window; otherwise the miss is recorded."""
        from runner.catchup import find_missed
        from runner.execution import record_missed

        now = utcnow()
        last = self.store.last_scheduled()
        for name in self._scheduled_names():
            job = self.settings.jobs[name]
            missed = find_missed(job, last.get(name), now)
            if missed is None:
                continue
            fire = Fire(Trigger.SCHEDULE.value, fire_key(missed.latest), missed.latest, late=True)
            if missed.runnable:
                log.warning("job=%s %s", name, missed.reason(job.catchup_s))
                self.dispatch(name, fire, jitter_s=0.0)
            else:
                log.warning("job=%s %s", name, missed.reason(job.catchup_s))
                record_missed(self.store, name, fire, missed.reason(job.catchup_s))

    # -- file events --
    def _start_watches(self) -> None:
        from runner.watch import WatchService

        jobs = [(name, job) for name, job in sorted(self.settings.jobs.items()) if job.watch]
        self.watches = WatchService(
            jobs,
            claim=self._claim_files,
            dispatch=self._dispatch_files,
            free_slots=lambda: self.settings.runner.max_workers - self.server.in_flight,
            release=self.store.release_orphan_claims,
        )
        self.watches.start()

    def _claim_files(self, name: str, versions: list[Any]) -> tuple[str, list[str]]:
        key = f"files:{uuid.uuid4().hex}"
        return key, self.store.claim_files(name, key, [(v.path, v.size, v.mtime_ns) for v in versions])

    def _dispatch_files(self, name: str, key: str, paths: list[str]) -> None:
        fire = Fire(Trigger.FILE.value, key, paths=tuple(Path(p) for p in paths))
        if self._stopping or self._pool is None:
            self.store.settle_files(name, key, succeeded=False)
            return
        future = self.server.submit(_request(name, fire))

        def done(result: Future[int]) -> None:
            if result.result() == EXIT_NOT_STARTED and self.watches is not None:
                self.watches.offer_again(name, paths)  # skipped (overlap): its files wait for the next run
            if self.watches is not None:
                self.watches.wake()

        future.add_done_callback(done)

    def dispatch(self, name: str, fire: Fire, *, jitter_s: float | None = None) -> Future[Any] | None:
        if self._stopping or self._pool is None:
            return None
        return self._pool.submit(self._fire, name, fire, jitter_s)

    def _fire(self, name: str, fire: Fire, jitter_s: float | None) -> int:
        from runner.execution import record_missed

        job = self.settings.jobs.get(name)
        if job is None or self._stopping:
            return EXIT_USAGE
        delay = random.uniform(0, job.jitter_s if jitter_s is None else jitter_s)
        if delay:
            time.sleep(delay)
        late_s = (utcnow() - fire.scheduled_at).total_seconds() if fire.scheduled_at else 0.0
        if not fire.late and job.catchup_s and late_s > job.catchup_s + delay:
            record_missed(self.store, name, fire, f"waited {late_s:.0f}s for a free worker: beyond catchup")
            return EXIT_NOT_STARTED
        return self.server.submit(_request(name, fire)).result()


def _request(name: str, fire: Fire) -> dict[str, Any]:
    return {
        "job": name,
        "trigger": fire.kind,
        "key": fire.key,
        "scheduled_at": fire.scheduled_at.isoformat() if fire.scheduled_at else None,
        "late": fire.late,
        "paths": [str(p) for p in fire.paths],
    }


def _noop() -> None:
    """APScheduler needs a callable; our executor never calls it."""


def _executor_base() -> type:
    from apscheduler.executors.base import BaseExecutor

    return BaseExecutor


class _DispatchExecutor(_executor_base()):  # type: ignore[misc]
    """Hands APScheduler's due fires (with their scheduled times) to the daemon's bounded pool."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__()
        self.daemon = daemon

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        scheduled = run_times[-1].astimezone(UTC)  # coalesced: the newest of the due times
        fire = Fire(Trigger.SCHEDULE.value, fire_key(scheduled), scheduled)
        future = self.daemon.dispatch(job.id, fire)
        if future is None:
            self._run_job_success(job.id, [])
            return
        future.add_done_callback(lambda _f: self._run_job_success(job.id, []))


def _trigger_base() -> type:
    from apscheduler.triggers.base import BaseTrigger

    return BaseTrigger


class _ScheduleTrigger(_trigger_base()):  # type: ignore[misc]
    """Our schedules (DST-correct, see runner.triggers) as an APScheduler 3 trigger."""

    __slots__ = ("schedules",)

    def __init__(self, schedules: tuple[Any, ...]) -> None:
        self.schedules = schedules

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        from runner.catchup import next_fire

        after = previous_fire_time or (now - timedelta(microseconds=1))
        return next_fire(self.schedules, after)

    def __str__(self) -> str:
        return "; ".join(str(s) for s in self.schedules)


def run_daemon(config: str | None) -> int:
    from runner.config import find_config

    gc.enable()  # `runner` starts with collections off for quick one-shot commands
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return Daemon(find_config(config)).run()
