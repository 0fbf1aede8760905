"""The fork server and its supervisor workers: where the daemon's fires are run.

The daemon forks the fork server before it starts any thread. The fork server (single-threaded,
with `runner` and every job module imported) forks `max_workers` long-lived supervisor workers.
Each worker takes one fire at a time and runs it through the one execution path, which forks the
job's child from the worker (also single-threaded). Workers live on between fires, so a fire
costs one fork and two short transactions, not a fresh process.
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
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.config import load_settings
from runner.enums import RunStatus
from runner.errors import NotClaimed, RunnerError, StorageError
from runner.messages import NOT_CLAIMED, Command, FireReply, FireRequest, Lines, read_order, send
from runner.prctl import set_parent_death_signal
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.store import Store

log = logging.getLogger("runner.daemon")

STOP_ESCALATE_S = 0.5  # after the first SIGTERM to busy workers, a second one kills their jobs
GONE = -1  # the exit code reported for a fire whose worker or server vanished


# --- the daemon's side ----------------------------------------------------------------------------


class ForkServer:
    """The daemon's handle on the fork server: submit fires, get their exit codes as futures."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.pid = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, Future[int]] = {}
        self._next_id = 0

    def start(self) -> None:
        """Fork the server. Call before the daemon starts any thread."""
        parent_sock, child_sock = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                parent_sock.close()
                code = _Server(self.config_path, child_sock).serve()
            except BaseException:
                logging.getLogger("runner.forkserver").exception("fork server crashed")
            finally:
                os._exit(code)
        child_sock.close()
        self.pid = pid
        self._sock = parent_sock
        threading.Thread(target=self._read_replies, name="forkserver-replies", daemon=True).start()

    def submit(self, request: FireRequest) -> Future[int]:
        future: Future[int] = Future()
        with self._lock:
            self._next_id += 1
            self._pending[self._next_id] = future
            try:
                send(self._sock, replace(request, id=self._next_id))
            except OSError:
                self._pending.pop(self._next_id)
                future.set_result(GONE)
        return future

    def reload(self) -> None:
        """Read the config again: new workers for new fires, the old ones finish theirs first."""
        self._command(Command.RELOAD)

    def _command(self, command: Command) -> None:
        with self._lock, contextlib.suppress(OSError):
            send(self._sock, command)

    def _read_replies(self) -> None:
        lines = Lines(self._sock)
        while not lines.closed:
            for message in lines.read():
                reply = FireReply.from_message(message)
                with self._lock:
                    future = self._pending.pop(reply.id, None)
                if future is not None:
                    future.set_result(reply.code)
        with self._lock:  # the server is gone: nothing pending will finish
            for future in self._pending.values():
                future.set_result(GONE)
            self._pending.clear()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def stop(self, timeout_s: float) -> None:
        """Stop every worker (a running job becomes 'killed'), then the server; wait for it."""
        self._command(Command.STOP)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


# --- the server -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    pid: int
    sock: socket.socket
    lines: Lines
    busy: int | None = None  # the request id it is running
    retiring: bool = False  # finish the current fire, then exit (after a reload)


class _Server:
    def __init__(self, config_path: Path, sock: socket.socket) -> None:
        self.config_path = config_path
        self.sock = sock
        self.daemon_pid = os.getppid()
        self.workers: dict[int, _Worker] = {}
        self.queue: deque[FireRequest] = deque()
        self.stopping_since: float | None = None
        self.escalated = False
        self.selector = selectors.DefaultSelector()

    def serve(self) -> int:
        from runner.store import Store

        set_parent_death_signal(signal.SIGTERM)
        # Out of the terminal's session: a Ctrl-C or hang-up is the daemon's to handle (it stops
        # gracefully), never a signal to the workers that supervise running jobs.
        with contextlib.suppress(OSError):
            os.setsid()
        self._load()
        # Workers leave WAL checkpoints to the daemon's heartbeat (see Store.checkpoint).
        self.store = Store(
            self.settings.runner.database,
            autocheckpoint=False,
            lock_timeout_s=self.settings.runner.lock_timeout_s,
            data_url=self.settings.runner.data_database,
        )
        self.store.warm_up()
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
            if self.stopping_since is not None:
                if not self.escalated and time.monotonic() - self.stopping_since > STOP_ESCALATE_S:
                    self.escalated = True
                    self._signal_workers(busy_only=True)
                if not self.workers:
                    return 0

    def _load(self) -> None:
        from runner.discovery import discover

        self.settings = load_settings(self.config_path)
        discover(self.settings)  # every job module imported once, before the workers fork
        import ctypes  # noqa: F401  (job children set their parent-death signal with it)

        gc.freeze()  # keep the collector from touching (and so copying) pages shared with forks

    def _on_daemon(self, message: dict[str, Any]) -> None:
        order = read_order(message)
        if order is Command.STOP:
            self._stop()
        elif order is Command.RELOAD:
            try:
                self._load()
            except RunnerError as exc:
                log.error("fork server: reload failed: %s", exc)
                return
            for worker in self.workers.values():  # finish what they run, then make way
                worker.retiring = True
                with contextlib.suppress(OSError):
                    send(worker.sock, Command.EXIT)
            self._spawn_workers()
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
        idle = [w for w in self.workers.values() if w.busy is None and not w.retiring and not w.lines.closed]
        while self.queue and idle:
            worker = idle.pop()
            request = self.queue.popleft()
            try:
                send(worker.sock, request)
                worker.busy = request.id
            except OSError:
                self.queue.appendleft(request)

    def _spawn_workers(self) -> None:
        active = sum(1 for w in self.workers.values() if not w.retiring)
        for _ in range(self.settings.runner.max_workers - active):
            self._spawn_worker()

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
            if self.stopping_since is None and not worker.retiring:
                self._spawn_worker()

    def _stop(self) -> None:
        if self.stopping_since is not None:
            return
        self.stopping_since = time.monotonic()
        for request in self.queue:
            self._reply(request.id, GONE)
        self.queue.clear()
        for worker in self.workers.values():  # a busy one reads this once its fire is recorded
            with contextlib.suppress(OSError):
                send(worker.sock, Command.EXIT)
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
    from runner.execution import execute_configured

    fire = request.fire
    try:
        resume = store.get_run(request.resume) if request.resume else None
        outcome = execute_configured(settings, store, request.job, fire, reap=False, resume=resume)
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
