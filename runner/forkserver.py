"""The fork server and its supervisor workers: where the daemon's fires are run.

The daemon starts a fork server when it starts (forked before any thread) and on every reload (a
fresh interpreter, so edited job code takes effect): see runner.forkservers. The fork server
(single-threaded) imports every job module, says what code it loaded (`Hello`), and forks
`max_workers` long-lived supervisor workers. Each worker takes one fire at a time and runs it through the one execution path, which
forks the job's child from the worker (also single-threaded). Workers live on between fires, so a
fire costs one fork and two short transactions, not a fresh process. A retired server (a reload
replaced it) lets its workers finish the fires they run, then exits.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from runner.config import load_settings
from runner.enums import RunStatus, SkipReason
from runner.errors import (
    EXIT_NOT_STARTED,
    BrokenJob,
    ConfigError,
    NotClaimed,
    ParamError,
    RunnerError,
    StorageError,
    UnknownJob,
)
from runner.messages import NOT_CLAIMED, Command, FireReply, FireRequest, Hello, Lines, read_order, send
from runner.prctl import set_parent_death_signal
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.store import Store

log = logging.getLogger("runner.daemon")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the daemon's and its servers'
STOP_ESCALATE_S = 0.5  # after the first SIGTERM to busy workers, a second one kills their jobs
GONE = -1  # the exit code reported for a fire whose worker or server vanished


# --- the server -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    pid: int
    sock: socket.socket
    lines: Lines
    busy: int | None = None  # the request id it is running
    told_to_exit: bool = False  # it exits once its current fire (if any) is recorded


class _Server:
    def __init__(self, config_path: Path, sock: socket.socket) -> None:
        self.config_path = config_path
        self.sock = sock
        self.daemon_pid = os.getppid()
        self.workers: dict[int, _Worker] = {}
        self.queue: deque[FireRequest] = deque()
        self.stopping_since: float | None = None
        self.retiring = False  # a reload replaced us: finish what runs, start nothing new
        self.escalated = False
        self.selector = selectors.DefaultSelector()

    def serve(self) -> int:
        from runner.version import __version__

        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != self.daemon_pid:  # the daemon died before we could ask to follow it
            return 0
        # Out of the terminal's session: a Ctrl-C or hang-up is the daemon's to handle (it stops
        # gracefully), never a signal to the workers that supervise running jobs.
        with contextlib.suppress(OSError):
            os.setsid()
        try:
            hello = self._load()
        except RunnerError as exc:
            send(self.sock, Hello(__version__, error=str(exc)))
            return exc.exit_code
        send(self.sock, hello)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon, which decides
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.wake_r = wake_r
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.selector.register(wake_r, selectors.EVENT_READ)
        daemon_lines = Lines(self.sock)
        self._spawn_workers()
        while True:
            for key, _ in self.selector.select(timeout=0.2 if self.stopping_since else 1.0):
                if key.fileobj is self.sock:
                    for message in daemon_lines.read():
                        self._on_daemon(message)
                    if daemon_lines.closed:
                        self.selector.unregister(self.sock)
                        self._stop()
                elif key.fileobj == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                else:
                    self._on_worker(key.data)
            self._reap()
            if os.getppid() != self.daemon_pid:
                self._stop()
            self._dispatch()
            if self.retiring and not self.queue:
                self._tell_workers_to_exit()
            stopping_s = time.monotonic() - self.stopping_since if self.stopping_since is not None else 0.0
            if not self.escalated and stopping_s > STOP_ESCALATE_S:
                self.escalated = True
                self._signal_workers(busy_only=True)
            if (self.stopping_since is not None or self.retiring) and not self.workers:
                return 0

    def _load(self) -> Hello:
        """Import every job module (before the workers fork) and open the store: what we run."""
        from runner.codeversion import code_version, refresh_bytecode
        from runner.discovery import discover
        from runner.store import Store
        from runner.version import __version__

        self.settings = load_settings(self.config_path)
        refresh_bytecode(self.settings)
        catalog = discover(self.settings)
        configured = {*self.settings.jobs, *self.settings.unusable}
        broken = {name: reason for name, reason in catalog.broken.items() if name in configured}
        for name, reason in sorted(broken.items()):
            log.error("job %s is broken and will not run (its fires are recorded failed): %s", name, reason)
        hello = Hello(
            runner_version=__version__,
            code_version=code_version(self.settings),
            policies={name: str(spec.overlap) for name, spec in catalog.jobs.items()},
            broken=broken,
            retries={name: spec.retries for name, spec in catalog.jobs.items()},
        )
        # Workers leave WAL checkpoints to the daemon's heartbeat (see Store.checkpoint).
        self.store = Store(
            self.settings.runner.database,
            autocheckpoint=False,
            lock_timeout_s=self.settings.runner.lock_timeout_s,
            data_url=self.settings.runner.data_database,
        )
        self.store.warm_up()
        import ctypes  # noqa: F401  (job children set their parent-death signal with it)

        gc.freeze()  # keep the collector from touching (and so copying) pages shared with forks
        return hello

    def _on_daemon(self, message: dict[str, Any]) -> None:
        order = read_order(message)
        if order is Command.STOP:
            self._stop()
        elif order is Command.RETIRE:
            self.retiring = True  # the loop tells the workers to exit once the queue is handed out
        elif self.stopping_since is None:
            self.queue.append(order)
        else:
            self._reply(order.id, GONE)

    def _on_worker(self, worker: _Worker) -> None:
        for message in worker.lines.read():
            reply = FireReply.from_message(message)
            self._reply(reply.id, reply.code)
            worker.busy = None
        if worker.lines.closed:
            self.selector.unregister(worker.sock)

    def _reply(self, request_id: int, code: int) -> None:
        with contextlib.suppress(OSError):
            send(self.sock, FireReply(request_id, code))

    def _dispatch(self) -> None:
        idle = [
            w for w in self.workers.values() if w.busy is None and not w.told_to_exit and not w.lines.closed
        ]
        while self.queue and idle:
            worker = idle.pop()
            request = self.queue.popleft()
            try:
                send(worker.sock, request)
                worker.busy = request.id
            except OSError:
                self.queue.appendleft(request)

    def _spawn_workers(self) -> None:
        for _ in range(self.settings.runner.max_workers):
            self._spawn_worker()

    def _tell_workers_to_exit(self) -> None:
        """Each worker exits once its current fire (if any) is recorded."""
        for worker in self.workers.values():
            if not worker.told_to_exit:
                worker.told_to_exit = True
                with contextlib.suppress(OSError):
                    send(worker.sock, Command.EXIT)

    def _spawn_worker(self) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                ours.close()
                self.selector.close()
                self.sock.close()
                for worker in self.workers.values():
                    worker.sock.close()
                code = _worker_loop(self.settings, self.store, theirs)
            except BaseException:
                logging.getLogger("runner.worker").exception("supervisor worker crashed")
            finally:
                os._exit(code)
        theirs.close()
        worker = _Worker(pid, ours, Lines(ours))
        self.workers[pid] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.sock)
            worker.sock.close()
            if worker.busy is not None:
                log.error(
                    "supervisor worker %s died (%s) while running a fire",
                    pid,
                    os.waitstatus_to_exitcode(status),
                )
                self._reply(worker.busy, GONE)
            if self.stopping_since is None and not self.retiring:
                self._spawn_worker()

    def _stop(self) -> None:
        if self.stopping_since is not None:
            return
        self.stopping_since = time.monotonic()
        for request in self.queue:
            self._reply(request.id, GONE)
        self.queue.clear()
        self._tell_workers_to_exit()  # a busy one reads this once its fire is recorded
        self._signal_workers(busy_only=False)

    def _signal_workers(self, *, busy_only: bool) -> None:
        for worker in self.workers.values():
            if not busy_only or worker.busy is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)


# --- a worker ---------------------------------------------------------------------------------------


def _worker_loop(settings: Settings, store: Store, sock: socket.socket) -> int:
    """Run fires one at a time until told to exit. SIGTERM while idle ends the worker; while a fire
    runs, the execution path catches it and stops the job (status 'killed')."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    set_parent_death_signal(signal.SIGTERM)
    store.after_fork()
    # Pay the copy-on-write and connect costs now, not on a fire; a database that is away now
    # (a worker replaced during an outage) only makes the first fire slower.
    with contextlib.suppress(StorageError):
        store.warm_up(keep_connection=True)
    lines = Lines(sock)
    while not lines.closed:
        for message in lines.read():
            order = read_order(message)
            if order is Command.EXIT:
                return 0
            send(sock, FireReply(order.id, run_fire(settings, store, order)))
    return 0


def run_fire(settings: Settings, store: Store, request: FireRequest) -> int:
    """One fire from the daemon, through the one execution path; returns `runner run`'s exit code."""
    from runner.execution import configured_job, execute, record_broken

    fire = request.fire
    if request.job not in settings.jobs and request.job not in settings.unusable:
        # handed over while a reload removed the job: what the dispatcher records for such fires
        error = "reload: the job was removed from the config before this fire started"
        try:
            store.record_skipped(
                request.job, fire.kind, [(fire.key, fire.scheduled_at)], SkipReason.RELOAD, error
            )
            if fire.paths:
                store.files.settle(request.job, fire.key, succeeded=False, started=False)
        except StorageError:  # the daemon holds the fire (and its files) until the database is back
            return NOT_CLAIMED
        return EXIT_NOT_STARTED
    try:
        spec, params = configured_job(settings, request.job)
    except (BrokenJob, ConfigError, ParamError, UnknownJob) as exc:
        log.error("job=%s fire=%s not run, recorded failed: %s", request.job, fire.key, exc)
        try:
            record_broken(store, request.job, fire, str(exc))
        except RunnerError as storage:
            log.error("job=%s fire=%s could not be recorded: %s", request.job, fire.key, storage)
        return exc.exit_code
    try:
        resume = store.get_run(request.resume) if request.resume else None
        outcome = execute(
            spec, params, fire, settings=settings.runner, store=store, reap=False, resume=resume
        )
    except NotClaimed as exc:  # the daemon logs the outage once and runs the fire when it is over
        log.debug("job=%s fire=%s not claimed: %s", request.job, fire.key, exc)
        return NOT_CLAIMED
    except StorageError as exc:  # it ran: its outcome waits in the spool (or the log folder failed)
        log.warning("job=%s fire=%s: %s", request.job, fire.key, exc)
        return exc.exit_code
    except RunnerError as exc:
        log.info("job=%s fire=%s not run: %s", request.job, fire.key, exc)
        return exc.exit_code
    late = " (late)" if fire.late else ""
    message = (
        f"run={outcome.run_id} job={request.job} fire={fire.key}{late} "
        f"{outcome.status} in {outcome.duration_s:.2f}s"
    )
    if outcome.error:
        message += f": {outcome.error}"
    (log.info if outcome.status is RunStatus.SUCCEEDED else log.warning)(message)
    return outcome.cli_exit_code


# --- the process ------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """A fork server the daemon spawned (runner.forkservers): `FD CONFIG`, the socket to the
    daemon and the config file."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    serve(socket.socket(fileno=int(argv[0])), Path(argv[1]))


def serve(sock: socket.socket, config_path: Path) -> NoReturn:
    """Be the fork server on `sock` until told to stop or retire, then exit."""
    code = 70
    try:
        code = _Server(config_path, sock).serve()
    except BaseException:
        log.exception("fork server crashed")
    finally:
        sys.stderr.flush()
        os._exit(code)
