"""A throwaway PostgreSQL cluster for tests that stop and start the server: its own data folder
and a free port on 127.0.0.1, so the shared server on 5432 is never touched."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

SERVER_USER = "postgres"  # initdb and postgres refuse to run as root
START_TIMEOUT_S = 60


def _find(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    return versions[-1] if versions else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgCluster:
    """`initdb` in a temporary folder, then `start()` / `stop(mode)` with pg_ctl."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _find("initdb"), _find("pg_ctl")
        if not initdb or not self.pg_ctl:
            pytest.skip("a throwaway PostgreSQL needs initdb and pg_ctl (Debian: apt-get install postgresql)")
        self.as_user: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="runner-pg-"))
        if os.getuid() == 0:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                shutil.rmtree(self.base)
                pytest.skip(f"as root, a throwaway PostgreSQL needs the user {SERVER_USER!r} to run it")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", SERVER_USER, "--"]
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            [*self.as_user, *argv], capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=self.base
        )
        if done.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}\n{tail}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            # fsync off survives a server crash (the OS keeps what was written), not a machine crash;
            # synchronous_commit stays on: an immediate stop would lose transactions it acknowledged
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            [
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.base / "server.log"),
                "-o",
                options,
                "-w",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast` (clients are disconnected) or `-m immediate` (like a crash)."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
