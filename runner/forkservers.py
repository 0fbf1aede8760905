"""The daemon's side of its fork servers (runner.forkserver): start one that imports the job code
as it is on disk now; hand it fires and get their exit codes as futures; on a reload, switch new
fires to a new server while the old one finishes what it runs, then retires and is reaped.

The first server is forked before the daemon starts any thread (the daemon never imports job
modules, so the fork imports them fresh). A reload's server is a fresh interpreter: the daemon has
threads by then, and only a new interpreter imports a module it has imported before anew."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from runner.errors import RunnerError
from runner.forkserver import GONE
from runner.messages import Command, FireReply, FireRequest, Hello, Lines, send

log = logging.getLogger("runner.daemon")

START_TIMEOUT_S = 30.0  # importing the job modules; under systemd's WatchdogSec (60 s) of the unit
# The server's interpreter gets the daemon's sys.path (not the working directory `-c` would add),
# so it imports the same packages from the same places, in their current state on disk.
_BOOT = "import sys, json; sys.path[:] = json.loads(sys.argv[1]); import runner.forkserver as f; f.main(sys.argv[2:])"


class ForkServer:
    """One fork server: `start()` it, `submit` fires, `retire()` or `stop()` it."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.process: subprocess.Popen[bytes] | None = None  # a spawned server
        self.pid = 0
        self.returncode: int | None = None
        self.hello: Hello | None = None
        self._sock: socket.socket | None = None
        self._lines: Lines | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, Future[int]] = {}
        self._next_id = 0

    def start(self, *, fork: bool = False) -> Hello:
        """Start the server (`fork`: by forking this process, which must have no thread yet) and
        wait until it has imported the job code; RunnerError if it cannot."""
        ours, theirs = socket.socketpair()
        if fork:
            sys.stdout.flush()
            sys.stderr.flush()
            self.pid = os.fork()
            if self.pid == 0:
                from runner.forkserver import serve

                ours.close()
                serve(theirs, self.config_path)
            theirs.close()
        else:
            self._spawn(ours, theirs)
        self._sock, self._lines = ours, Lines(ours)
        hello = self._wait_for_hello()
        if hello.error:
            self._wait(time.monotonic() + START_TIMEOUT_S)
            raise RunnerError(hello.error)
        self.hello = hello
        threading.Thread(target=self._read_replies, name=f"forkserver-{self.pid}", daemon=True).start()
        return hello

    def _spawn(self, ours: socket.socket, theirs: socket.socket) -> None:
        argv = [
            sys.executable,
            "-P",
            "-c",
            _BOOT,
            json.dumps(sys.path),
            str(theirs.fileno()),
            str(self.config_path),
        ]
        try:
            self.process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            raise RunnerError(
                f"cannot start a fork server ({sys.executable}): {exc.strerror or exc}"
            ) from None
        finally:
            theirs.close()
        self.pid = self.process.pid

    def _wait_for_hello(self) -> Hello:
        assert self._sock is not None and self._lines is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not self._lines.closed:
            if select.select([self._sock], [], [], 0.5)[0]:
                for message in self._lines.read():
                    if (hello := Hello.from_message(message)) is not None:
                        return hello
        timed_out = not self._lines.closed
        self._kill()
        why = (
            f"it did not import the job modules within {START_TIMEOUT_S:.0f}s"
            if timed_out
            else f"it exited with code {self.returncode}"
        )
        raise RunnerError(f"the fork server could not start: {why} (see the lines logged above)")

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

    def retire(self) -> None:
        """No new fires come: finish the running ones, then exit."""
        self._command(Command.RETIRE)

    def _command(self, command: Command) -> None:
        with self._lock, contextlib.suppress(OSError):
            send(self._sock, command)

    def _read_replies(self) -> None:
        assert self._lines is not None
        while not self._lines.closed:
            for message in self._lines.read():
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

    def exited(self) -> bool:
        """True once the server has exited (and is reaped)."""
        if self.returncode is None and self.pid:
            if self.process is not None:
                self.returncode = self.process.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode is not None or not self.pid

    def stop(self) -> None:
        """Stop every worker (a running job becomes 'killed'), then the server: see `wait`."""
        self._command(Command.STOP)

    def wait(self, deadline: float) -> None:
        """Wait for the server to exit until `deadline` (monotonic), then kill it; reap it."""
        self._wait(deadline)
        if self._sock is not None:
            self._sock.close()

    def _wait(self, deadline: float) -> None:
        while not self.exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._kill()

    def _kill(self) -> None:
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if self.process is not None:
                self.returncode = self.process.wait()
            else:
                self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


class ForkServers:
    """The daemon's fork servers: the current one takes every new fire; those a reload replaced
    finish theirs and are reaped by `reap()`. `in_flight` counts the fires of all of them, so
    max_workers bounds old and new code together."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.current = ForkServer(config_path)
        self.retiring: list[ForkServer] = []
        self._lock = threading.Lock()

    @property
    def hello(self) -> Hello:
        assert self.current.hello is not None
        return self.current.hello

    def start(self) -> Hello:
        """The first server: forked (call before the daemon starts any thread)."""
        return self.current.start(fork=True)

    def start_new(self) -> ForkServer:
        """A new server with fresh imports, started but taking no fire until `switch_to` it."""
        server = ForkServer(self.config_path)
        server.start()
        return server

    def switch_to(self, server: ForkServer) -> None:
        """New fires go to `server` from now; the previous one retires. Every fire handed to the
        previous one was sent before it is told to retire (both under the lock)."""
        with self._lock:
            previous, self.current = self.current, server
            previous.retire()
            self.retiring.append(previous)

    def submit(self, request: FireRequest) -> Future[int]:
        with self._lock:
            return self.current.submit(request)

    @property
    def in_flight(self) -> int:
        with self._lock:
            servers = [self.current, *self.retiring]
        return sum(server.in_flight for server in servers)

    def reap(self) -> list[ForkServer]:
        """The retired servers that have exited (now reaped), no longer ours."""
        with self._lock:
            gone = [server for server in self.retiring if server.exited()]
            self.retiring = [server for server in self.retiring if server not in gone]
        for server in gone:
            server.wait(time.monotonic())
        return gone

    def stop(self, timeout_s: float) -> None:
        """Stop every server, current and retiring, and wait for them (killed after `timeout_s`)."""
        with self._lock:
            servers = [self.current, *self.retiring]
        for server in servers:
            server.stop()
        deadline = time.monotonic() + timeout_s
        for server in servers:
            server.wait(deadline)
