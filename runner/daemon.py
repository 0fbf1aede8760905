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
from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runner.config import load_settings
from runner.context import Fire
from runner.daemonevents import FileEvents
from runner.daemonmissed import MissedFires
from runner.daemonoutage import DatabaseOutage
from runner.daemonprune import PruneThread
from runner.errors import EXIT_JOB_FAILED, EXIT_OK, EXIT_STORAGE, RunnerError, StorageError
from runner.forkserver import LOG_FORMAT
from runner.forkservers import ForkServer, ForkServers
from runner.messages import FireRequest
from runner.models import Trigger, clock_offset, set_clock_offset, utcnow
from runner.settings import Settings
from runner.spool import replay
from runner.triggers import fire_key
from runner.version import __version__

log = logging.getLogger("runner.daemon")

QUEUE_PUBLISH_S = 1.0  # how often a changed queue is written to the daemon's row (`runner status`)
# [runner] keys a reload cannot apply: the stores are open, the metrics port is bound
RESTART_SETTINGS = ("database", "metrics_listen")
CLOCK_TOLERANCE_S = 1.0  # a host clock further than this from the database's is corrected
FIRED_WINDOW_S = 3600.0  # `runner status` shows the runs each daemon started in the last hour


# --- the daemon -------------------------------------------------------------------------------------


class Daemon(MissedFires, FileEvents, DatabaseOutage):
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
        self.server = ForkServers(config_path)
        self.code_loaded_at: datetime | None = None  # when the current fork server imported the jobs
        self.scheduler: Any = None
        self.watches: Any = None
        self.metrics: Any = None  # the metrics HTTP server, with metrics_listen
        self.daemon_id: int | None = None
        self.exit_code = 0
        self.started_at = _process_started_at()
        self.caught_up_to = self.started_at  # catch-up handled every fire up to here
        self.retries: dict[str, int] = {}  # per job: how many retries a lost run may have
        self._fired: deque[tuple[float, str]] = deque()  # (monotonic, job) of runs it started
        self._init_outage()
        self.pruner = PruneThread(lambda: self.settings)  # keep_runs, keep_logs: every prune_every

    # -- life cycle --
    def run(self) -> int:
        from runner.dispatch import Dispatcher
        from runner.store import Store
        from runner.systemd import notify

        self.store = Store(
            self.settings.runner.database,
            lock_timeout_s=self.settings.runner.lock_timeout_s,
            data_url=self.settings.runner.data_database,
        )
        self.store.ensure_schema()
        self._set_clock()
        self.store.engine.dispose()
        self.database_identity = self.store.file_identity()  # SQLite: the file we opened
        hello = self.server.start()  # imports the job code (the daemon itself never does)
        self.code_loaded_at = utcnow()
        self._serve_metrics()  # a thread: after the first fork server forked
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self.dispatcher = Dispatcher(
            self.settings,
            hello.policies,
            send=lambda name, fire: self._send(FireRequest(name, fire)),
            busy=lambda: self.server.in_flight,
            record=self._record_skips,
            unclaimed=self._on_unclaimed,
        )
        self.retries = hello.retries
        self.dispatcher.start()
        self._catch_up()
        self._resume_retries()
        self._start_scheduler()
        self._start_watches()
        self.pruner.start()
        self.daemon_id = self.store.daemons.register(str(self.config_path), self._code())  # status: up
        jobs = self._scheduled_names() + [
            f"{n} (watch)" for n, j in sorted(self.settings.jobs.items()) if j.watch
        ]
        notify("READY=1\nSTATUS=firing " + ", ".join(jobs))
        log.info(
            "daemon %s ready: pid %s, code %s, jobs: %s",
            self.daemon_id,
            os.getpid(),
            hello.code_version,
            ", ".join(jobs) or "none",
        )
        self._loop()
        notify("STOPPING=1")
        return self._shutdown()

    def _serve_metrics(self) -> None:
        """With metrics_listen: serve the run history's totals (a thread, so after the fork server)."""
        listen = self.settings.runner.metrics_listen
        if listen is None:
            return
        from runner.metrics import HistoryCollector, serve

        collector = HistoryCollector(lambda: self.settings, self.store, lambda: not self._stopping)
        try:
            self.metrics = serve(listen, collector)
        except RunnerError:
            self.server.stop(timeout_s=self.settings.runner.kill_grace_s + 5)
            raise
        log.info("serving metrics on http://%s:%d/metrics", *listen)

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
            for server in self.server.reap():
                log.info("the fork server of code %s (pid %s) retired", server.hello.code_version, server.pid)
            if self.outage.down or self.outage.suspected:  # the database is away: probe it, nothing else
                if self.outage.probe_due():
                    self._probe()
                    next_beat = time.monotonic() + self.settings.runner.heartbeat_s
                if watchdog_s:
                    notify("WATCHDOG=1")  # we are alive and waiting, not hung
                continue
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

    def _set_clock(self) -> None:
        """Schedule on the database's clock when this host's is off (one clock for every host)."""
        from runner.store.clock import host_offset

        offset = host_offset(self.store)
        if abs(offset.total_seconds()) < CLOCK_TOLERANCE_S:
            return
        set_clock_offset(offset)
        self.started_at -= offset
        self.caught_up_to = self.started_at
        log.warning(
            "this host's clock is %.1fs %s the database's: schedules, catch-up and run times use the "
            "database's clock",
            abs(offset.total_seconds()),
            "ahead of" if offset > timedelta(0) else "behind",
        )

    def _send(self, request: FireRequest) -> Any:
        """Hand a fire to the fork server; a run it started counts in `runner status` once it ends."""
        future = self.server.submit(request)

        def count(done: Any) -> None:
            code = done.result()
            if code in (EXIT_OK, EXIT_JOB_FAILED) or code > 128:  # ran (exit 3 and the like: not)
                self._fired.append((time.monotonic(), request.job))

        future.add_done_callback(count)
        return future

    def _fired_last_hour(self) -> dict[str, int]:
        while self._fired and self._fired[0][0] < time.monotonic() - FIRED_WINDOW_S:
            self._fired.popleft()
        return dict(Counter(job for _, job in list(self._fired)))

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
        with contextlib.suppress(Exception):  # the heartbeat notices database trouble
            self.store.daemons.heartbeat(
                self.daemon_id,
                queues=self.dispatcher.snapshot(),
                notes=self.notes,
                fired=self._fired_last_hour(),
            )

    def _record_skips(self, skips: list[Any]) -> None:
        """Rows for fires the dispatcher did not run, one transaction per job and reason."""
        groups: dict[tuple[str, str, str, str], list[tuple[str, Any]]] = {}
        for skip in skips:
            key = (skip.job, skip.fire.kind, skip.reason, skip.error)
            groups.setdefault(key, []).append((skip.fire.key, skip.fire.scheduled_at))
            log.warning("job=%s fire=%s skipped: %s", skip.job, skip.fire.key, skip.error)
        self._record_skip_groups(list(groups.items()))  # kept for later while the database is away

    def _heartbeat(self) -> None:
        try:
            self.store.daemons.heartbeat(
                self.daemon_id,
                queues=self.dispatcher.snapshot(),
                notes=self.notes,
                fired=self._fired_last_hour(),
            )
            self.store.checkpoint()
            replay(self.settings.runner.var_dir, self.store)  # outcomes kept while the database was away
            lost = self.store.reap_lost(self.settings.runner.stale_after_s)
            if lost:
                log.warning("marked lost (their supervisor is gone): runs %s", ", ".join(map(str, lost)))
            self._retry_lost()
            self._notify_lost(lost)
        except StorageError as exc:  # the database is away: logged once, probed until it is back
            self._database_failed(exc)
        except Exception as exc:  # a bug must not stop the scheduling
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
        self.server.stop(timeout_s=reserve + self.settings.runner.kill_grace_s + 5)  # old code's too
        if self.exit_code == EXIT_STORAGE:  # the database file now at the path holds no row of ours
            removed = self.store.drop_old_wal()
            if removed:
                log.warning("removed the old database file's log: %s", ", ".join(removed))
        else:
            self._record_unscheduled()
            with contextlib.suppress(Exception):
                self.store.daemons.heartbeat(self.daemon_id, stopped=True, queues={})
        if self.metrics is not None:
            self.metrics.shutdown()
            self.metrics.server_close()
        log.info("daemon %s stopped", self.daemon_id)
        return self.exit_code

    def _reload(self) -> None:
        """SIGHUP: the config and the job code again. A new fork server imports the code as it is
        on disk and takes every fire from now on; the old one finishes the fires it runs, then
        exits. A config that does not load, or a server that cannot start, changes nothing; a job
        whose code does not load is broken (its fires are recorded failed), the others go on."""
        from runner.systemd import notify

        notify("RELOADING=1")
        try:
            settings = load_settings(self.config_path)
            server = self.server.start_new()
        except RunnerError as exc:
            log.error("reload failed, keeping the previous schedules and job code: %s", exc)
            notify("READY=1")
            return
        except Exception:  # a bug must not take the running daemon down with it
            log.exception("reload failed, keeping the previous schedules and job code")
            notify("READY=1")
            return
        assert server.hello is not None
        if server.hello.runner_version != __version__:
            self._refuse(
                server, f"runner {server.hello.runner_version} is installed, this daemon runs {__version__}"
            )
            notify("READY=1")
            return
        self._note_restart_settings(settings)
        # New fires go to the new code first, then the schedules change: a fire of a new job never
        # reaches the old server, which does not know it.
        was = self.server.hello.code_version
        self.server.switch_to(server)
        self.code_loaded_at = utcnow()
        self.retries = server.hello.retries
        previous, previous_policies = self.settings, self.dispatcher.policies
        try:
            self._apply(settings, server.hello.policies)
        except Exception:
            log.exception("reload failed while applying it; going back to the previous schedules")
            self._apply(previous, previous_policies)
        log.info(
            "reloaded %s: code %s (was %s); jobs %s; max_workers = %d; %d fire(s) finish on the old code",
            self.config_path,
            server.hello.code_version,
            was,
            ", ".join(self._scheduled_names()) or "none",
            settings.runner.max_workers,
            sum(s.in_flight for s in self.server.retiring),
        )
        with contextlib.suppress(Exception):  # the heartbeat reports database trouble
            self.store.daemons.loaded_code(self.daemon_id, self._code())
        self._publish()
        notify("READY=1")

    def _refuse(self, server: ForkServer, why: str) -> None:
        """A new fork server we will not use: stop it; the running one keeps every fire. Logged,
        and noted on our row for `runner status`."""
        server.stop()
        server.wait(time.monotonic() + self.settings.runner.kill_grace_s + 5)
        note = f"reload refused: {why}; the job code was not reloaded: restart the daemon (systemctl restart runner)"
        log.error("%s", note)
        if note not in self.notes:
            self.notes.append(note)
        self._publish()

    def _code(self) -> dict[str, Any]:
        """What `runner status` shows of the code this daemon runs (its row's columns)."""
        hello = self.server.hello
        return {
            "code_version": hello.code_version,
            "code_loaded_at": self.code_loaded_at,
            "broken": hello.broken,
        }

    def _apply(self, settings: Settings, policies: dict[str, str]) -> None:
        now = utcnow()
        for name, job in settings.jobs.items():  # a new schedule's fires count from now
            if self.settings.job(name) is None or self.settings.jobs[name].schedules != job.schedules:
                self.dispatcher.last_seen[name] = now
        for job in self.scheduler.get_jobs():  # no fire of an old schedule is submitted after this
            job.remove()
        self.settings = settings
        self.dispatcher.reload(settings, policies)
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
            scheduled = run_time.astimezone(UTC) - clock_offset()  # the instant on the database's clock
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
        """APScheduler's times are this host's clock; our schedules run on the database's."""
        from runner.catchup import next_fire

        offset = clock_offset()
        previous = previous_fire_time - offset if previous_fire_time else None
        after = previous or min(self.since, now - offset - timedelta(microseconds=1))
        at = next_fire(self.schedules, after)
        return at + offset if at is not None else None

    def __str__(self) -> str:
        return "; ".join(str(s) for s in self.schedules)


def run_daemon(config: str | None) -> int:
    from runner.config import find_config

    gc.enable()  # `runner` starts with collections off for quick one-shot commands
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return Daemon(find_config(config)).run()
