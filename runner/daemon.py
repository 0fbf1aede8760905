"""`runner daemon`: APScheduler 3 fires the INI's schedules; every fire goes through the one
execution path, in a supervisor worker of the fork server (see runner.forkserver)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runner.config import load_settings
from runner.context import Fire
from runner.daemonevents import FileEvents
from runner.daemonmissed import MissedFires
from runner.daemonprune import PruneThread
from runner.errors import EXIT_STORAGE, RunnerError
from runner.forkserver import ForkServer
from runner.messages import FireRequest
from runner.models import Trigger, utcnow
from runner.settings import Settings
from runner.spool import replay
from runner.triggers import fire_key

log = logging.getLogger("runner.daemon")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUEUE_PUBLISH_S = 1.0  # how often a changed queue is written to the daemon's row (`runner status`)
RESTART_SETTINGS = ("database",)  # [runner] keys a reload cannot apply: the stores are open


# --- the daemon -------------------------------------------------------------------------------------


class Daemon(MissedFires, FileEvents):
    """Schedules every job of the config with APScheduler and dispatches fires to the fork server."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.settings = load_settings(config_path)
        self.stop_signal: int | None = None
        self.hurry = False  # a second SIGTERM or Ctrl-C: kill running jobs now
        self.reload_requested = False
        self._wake = threading.Event()
        self._stopping = False
        self.dispatcher: Any = None
        self.notes: list[str] = []  # settings a reload could not apply (shown by `runner status`)
        self.server = ForkServer(config_path)
        self.scheduler: Any = None
        self.watches: Any = None
        self.daemon_id: int | None = None
        self.exit_code = 0
        self.started_at = _process_started_at()
        self.caught_up_to = self.started_at  # catch-up handled every fire up to here
        self.pruner = PruneThread(lambda: self.settings)  # keep_runs, keep_logs: every prune_every

    # -- life cycle --
    def run(self) -> int:
        from runner.discovery import discover
        from runner.dispatch import Dispatcher
        from runner.store import Store
        from runner.systemd import notify

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
        self.dispatcher = Dispatcher(
            self.settings,
            _policies(catalog),
            send=lambda name, fire: self.server.submit(FireRequest(name, fire)),
            busy=lambda: self.server.in_flight,
            record=self._record_skips,
        )
        self.dispatcher.start()
        self._catch_up()
        self._resume_retries()
        self._start_scheduler()
        self._start_watches()
        self.pruner.start()
        self.daemon_id = self.store.daemons.register(str(self.config_path))  # `runner status`: up
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
        self._loop()
        notify("STOPPING=1")
        return self._shutdown()

    def _loop(self) -> None:
        """Until a stop signal: reloads, heartbeats (and systemd's watchdog), queue snapshots."""
        from runner.systemd import notify, watchdog_interval_s

        watchdog_s = watchdog_interval_s()
        next_beat = 0.0
        while self.stop_signal is None:
            self._wake.wait(QUEUE_PUBLISH_S)
            self._wake.clear()
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            if time.monotonic() >= next_beat:
                if self._database_replaced():
                    break
                beat_s = self.settings.runner.heartbeat_s
                next_beat = time.monotonic() + (min(beat_s, watchdog_s) if watchdog_s else beat_s)
                self._heartbeat()
                if watchdog_s:
                    notify("WATCHDOG=1")
            elif self.dispatcher.changed:
                self._publish()

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

    def _publish(self) -> None:
        with contextlib.suppress(Exception):  # the heartbeat reports database trouble
            self.store.daemons.heartbeat(self.daemon_id, queues=self.dispatcher.snapshot(), notes=self.notes)

    def _record_skips(self, skips: list[Any]) -> None:
        """Rows for fires the dispatcher did not run, one transaction per job and reason."""
        groups: dict[tuple[str, str, str, str], list[tuple[str, Any]]] = {}
        for skip in skips:
            key = (skip.job, skip.fire.kind, skip.reason, skip.error)
            groups.setdefault(key, []).append((skip.fire.key, skip.fire.scheduled_at))
            log.warning("job=%s fire=%s skipped: %s", skip.job, skip.fire.key, skip.error)
        for (job, kind, reason, error), fires in groups.items():
            self.store.record_skipped(job, kind, fires, reason, error)

    def _heartbeat(self) -> None:
        try:
            self.store.daemons.heartbeat(self.daemon_id, queues=self.dispatcher.snapshot(), notes=self.notes)
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
        self.dispatcher.close()  # what waited for a worker is recorded skipped (shutdown)
        self.pruner.stop()
        reserve = min(2.0, grace / 4)
        deadline = time.monotonic() + max(0.0, grace - reserve)
        while self.server.in_flight and time.monotonic() < deadline and not self.hurry:
            time.sleep(0.1)
        if self.server.in_flight:
            log.warning("shutdown_grace is over: killing %d running job(s)", self.server.in_flight)
        self.server.stop(timeout_s=reserve + self.settings.runner.kill_grace_s + 5)
        if self.exit_code == EXIT_STORAGE:  # the database file now at the path holds no row of ours
            removed = self.store.drop_old_wal()
            if removed:
                log.warning("removed the old database file's log: %s", ", ".join(removed))
        else:
            self._record_unscheduled()
            with contextlib.suppress(Exception):
                self.store.daemons.heartbeat(self.daemon_id, stopped=True, queues={})
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
        self._note_restart_settings(settings)
        previous, previous_policies = self.settings, self.dispatcher.policies
        try:
            self._apply(settings, _policies(catalog))
        except Exception:
            log.exception("reload failed while applying it; going back to the previous schedules")
            self._apply(previous, previous_policies)
        else:
            log.info(
                "reloaded %s: jobs %s; max_workers = %d",
                self.config_path,
                ", ".join(self._scheduled_names()) or "none",
                settings.runner.max_workers,
            )
            self._publish()
        notify("READY=1")

    def _apply(self, settings: Settings, policies: dict[str, str]) -> None:
        now = utcnow()
        for name, job in settings.jobs.items():  # a new schedule's fires count from now
            if self.settings.job(name) is None or self.settings.jobs[name].schedules != job.schedules:
                self.dispatcher.last_seen[name] = now
        for job in self.scheduler.get_jobs():  # no fire of an old schedule is submitted after this
            job.remove()
        self.settings = settings
        self.dispatcher.reload(settings, policies)
        self.server.reload()
        self._add_jobs()
        if self.watches is not None:
            self.watches.stop()
        self._start_watches()
        self.dispatcher.wake()  # a larger max_workers frees workers for what waits

    def _note_restart_settings(self, settings: Any) -> None:
        for key in RESTART_SETTINGS:
            if getattr(settings.runner, key) != getattr(self.settings.runner, key):
                note = f"[runner] {key} changed: it takes effect when the daemon restarts"
                log.warning("reload: %s", note)
                if note not in self.notes:
                    self.notes.append(note)

    # -- scheduling --
    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": _DispatchExecutor(self)},
            job_defaults={"coalesce": True, "max_instances": 1_000_000, "misfire_grace_time": None},
        )
        self._add_jobs(since=self.caught_up_to)
        self.scheduler.start()

    def _add_jobs(self, since: datetime | None = None) -> None:
        """Schedule every job's fires after `since` (default: now); catch-up covered until then."""
        since = since or utcnow()
        for name in self._scheduled_names():
            self.dispatcher.last_seen.setdefault(name, since)
            job = self.settings.jobs[name]
            self.scheduler.add_job(
                _noop,
                trigger=_ScheduleTrigger(job.schedules, since),
                id=name,
                name=name,
                replace_existing=True,
            )


def _process_started_at() -> datetime:
    """When this process started (a fire due after it is no downtime miss), or now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # since boot
        age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return datetime.fromtimestamp(time.time() - age_s, UTC)
    except (OSError, ValueError, IndexError, AttributeError):
        return utcnow()


def _policies(catalog: Any) -> dict[str, str]:
    return {name: spec.overlap for name, spec in catalog.jobs.items()}


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
        for run_time in run_times:  # each due time: the dispatcher queues, coalesces or records it
            scheduled = run_time.astimezone(UTC)
            self.daemon.dispatcher.submit(job.id, Fire(Trigger.SCHEDULE, fire_key(scheduled), scheduled))
        self._run_job_success(job.id, [])


def _trigger_base() -> type:
    from apscheduler.triggers.base import BaseTrigger

    return BaseTrigger


class _ScheduleTrigger(_trigger_base()):  # type: ignore[misc]
    """Our schedules (DST-correct, see runner.triggers) as an APScheduler 3 trigger."""

    __slots__ = ("schedules", "since")

    def __init__(self, schedules: tuple[Any, ...], since: datetime) -> None:
        self.schedules = schedules
        self.since = since  # fires up to here were handled by catch-up (or the previous schedule)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        from runner.catchup import next_fire

        after = previous_fire_time or min(self.since, now - timedelta(microseconds=1))
        return next_fire(self.schedules, after)

    def __str__(self) -> str:
        return "; ".join(str(s) for s in self.schedules)


def run_daemon(config: str | None) -> int:
    from runner.config import find_config

    gc.enable()  # `runner` starts with collections off for quick one-shot commands
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return Daemon(find_config(config)).run()
