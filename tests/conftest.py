"""Shared fixtures: a real run-history database (a SQLite file, or a fresh schema on the real
PostgreSQL named by RUNNER_TEST_DATABASE_URL, or else on the server at 127.0.0.1:5432), a project
folder with its own INI file, and helpers that drive the installed `runner` console script the way
a user would."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import sqlalchemy as sa

TESTS_DIR = Path(__file__).resolve().parent
RUNNER_BIN = Path(sys.executable).parent / "runner"
PG_URL_ENV = "RUNNER_TEST_DATABASE_URL"
BACKENDS = ("sqlite", "postgresql")
COMMAND_TIMEOUT_S = 120.0
DEADLINE_S = 30.0  # how long a kill, a timeout or a reap may take to show (generous: CI machines are shared)
POLL_S = 0.05
CRONTAB_LOCK_PATH = Path("/tmp/runner-tests-crontab.lock")

T = TypeVar("T")


# --- databases ------------------------------------------------------------------------------------


LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
_local_database: list[str] = []  # the database this session made on the local server, if any
_no_local_server: list[str] = []  # why there is none (asked once per session, not once per test)


def _postgres_admin_url() -> str:
    """RUNNER_TEST_DATABASE_URL, or else a fresh database (one per test session, dropped at exit)
    on the PostgreSQL server answering on 127.0.0.1:5432, or else skip saying how to get one."""
    url = os.environ.get(PG_URL_ENV, "")
    if not url:
        url = _local_database[0] if _local_database else _make_local_database()
    from runner.store import normalise_url

    return normalise_url(url)


def _make_local_database() -> str:
    if _no_local_server:
        pytest.skip(_no_local_server[0])
    name = f"runner_test_{os.getpid()}_{int(time.time())}"
    try:
        server = sa.create_engine(
            LOCAL_POSTGRES, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server, no driver, no permission: the variant cannot run here
        _no_local_server.append(
            f"PostgreSQL variant: no server answered as postgres@127.0.0.1:5432 ({type(exc).__name__}); "
            f"start one with trust auth for local TCP, or set {PG_URL_ENV} to a database you may use"
        )
        pytest.skip(_no_local_server[0])
    url = LOCAL_POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    _local_database.append(url)

    def drop() -> None:
        with contextlib.suppress(Exception), server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()

    atexit.register(drop)
    return url


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL, dropped afterwards; yields a URL whose search_path is it."""
    admin_url = _postgres_admin_url()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in admin_url else "?"
        yield f"{admin_url}{separator}options={quote(f'-csearch_path={schema}', safe='-')}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The run-history database, once per backend: a SQLite file, or a schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'runner.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def crontab_lock() -> Iterator[None]:
    """The real crontab of this user is one per machine: tests that change it (from any checkout of
    the project running its tests at the same time) take turns on a machine-wide lock."""
    import fcntl

    with open(CRONTAB_LOCK_PATH, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def store(database_url: str) -> Iterator[Any]:
    """The engine's own Store on the test database (the schema is created on first use)."""
    from runner.store import Store

    instance = Store(database_url)
    yield instance
    instance.engine.dispose()


# --- a project: an INI file and the `runner` command ---------------------------------------------


@dataclass(frozen=True, repr=False)
class Done:
    """How one `runner` command ended."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __repr__(self) -> str:
        return f"runner {' '.join(self.args)} -> {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class Project:
    """A folder holding conf/runner.ini (and var/ beside it), with `runner` pointed at that file.

    The config file lives one folder down from the working directory the commands run in, so a
    relative path that resolved against the working directory instead of the file would show.
    """

    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root
        self.database_url = database_url
        self.config_path = root / "conf" / "runner.ini"
        self.var_dir = root / "conf" / "var"
        self.environ: dict[str, str] = {}  # extra environment for every command of this project
        self._processes: list[subprocess.Popen[str]] = []
        self.configure()

    @property
    def data_url(self) -> str:
        """The job-data database (jobs' own tables and state) for this project's history database."""
        from runner.store import default_data_url

        return default_data_url(self.database_url)

    # -- configuration
    def configure(self, jobs: str = "", **runner: str | None) -> Path:
        """Write the INI: [runner] defaults updated with `runner` (None drops a key), then `jobs`."""
        settings: dict[str, str | None] = {
            "database": self.database_url,
            "var_dir": "var",
            "job_packages": "jobs_fixture",
            "kill_grace": "1s",
        }
        settings.update(runner)
        lines = ["[runner]", *(f"{k} = {v}" for k, v in settings.items() if v is not None)]
        return self.write_config("\n".join(lines) + "\n\n" + textwrap.dedent(jobs).strip() + "\n")

    def write_config(self, text: str) -> Path:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RUNNER_CONFIG"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
        env.update(self.environ)
        env.update(extra)
        return env

    def argv(self, args: tuple[str, ...]) -> list[str]:
        return [str(RUNNER_BIN), "--config", str(self.config_path), *args]

    # -- commands
    def runner(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Done:
        """Run `runner --config conf/runner.ini ARGS...` to its end."""
        return self.command(self.argv(args), env=env, cwd=cwd, shown=args)

    def command(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        shown: tuple[str, ...] = (),
    ) -> Done:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env or self.env(),
            cwd=cwd or self.root,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        return Done(shown or tuple(argv), done.returncode, done.stdout, done.stderr)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start `runner ARGS...` in the background; the fixture kills it if the test did not end it.

        Its output goes to files, not pipes: a pipe nobody reads until the end holds 64 KiB, and a
        daemon that logs more (one line a run) would block on it and stop working."""
        output = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))  # noqa: SIM115 (closed by finish)
        process = subprocess.Popen(
            self.argv(args),
            stdout=output[0],
            stderr=output[1],
            text=True,
            env=self.env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
        )
        process.output = output  # type: ignore[attr-defined]
        self._processes.append(process)
        return process

    @staticmethod
    def finish(process: subprocess.Popen[str]) -> Done:
        process.wait(timeout=COMMAND_TIMEOUT_S)
        stdout, stderr = (_read_all(handle) for handle in process.output)  # type: ignore[attr-defined]
        return Done(tuple(process.args), process.returncode, stdout, stderr)

    def history(self, job: str | None = None) -> list[dict[str, Any]]:
        """Every run in `runner history --json`, oldest first."""
        done = self.runner("history", *([job] if job else []), "--limit", "1000", "--json")
        assert done.returncode == 0, done
        return list(reversed(done.json()))

    def run_row(self, run_id: int) -> dict[str, Any]:
        rows = [row for row in self.history() if row["id"] == run_id]
        assert rows, f"run {run_id} is not in the history"
        return rows[0]

    def only_run(self, job: str | None = None) -> dict[str, Any]:
        rows = self.history(job)
        assert len(rows) == 1, rows
        return rows[0]

    def pid_dir(self, name: str = "pids") -> Path:
        return self.root / name

    def cleanup(self) -> None:
        """Kill what a failed test may have left: our `runner` processes and the pids jobs wrote."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=DEADLINE_S)
        for pid_file in self.root.rglob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text())
                if not process_gone(pid) and str(self.root) in command_line(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Iterator[Project]:
    """A project on each backend (SQLite file, PostgreSQL schema)."""
    instance = Project(tmp_path / "project", database_url)
    yield instance
    instance.cleanup()


@pytest.fixture
def sqlite_project(tmp_path: Path) -> Iterator[Project]:
    """A project on a SQLite file, for behaviour that does not depend on the database."""
    instance = Project(tmp_path / "project", f"sqlite:///{tmp_path / 'db' / 'runner.db'}")
    yield instance
    instance.cleanup()


class Gate:
    """The `gate` job's two files: each run appends its pid to `started`, then waits for `release`."""

    def __init__(self, project: Project, overlap: str | None = None, **runner: str) -> None:
        self.started = project.root / "started.txt"
        self.release = project.root / "release"
        lines = ["[job:gate]", f"started = {self.started}", f"release = {self.release}"]
        if overlap:
            lines.append(f"overlap = {overlap}")
        project.configure("\n".join(lines), **runner)

    def bodies_started(self) -> int:
        return len(self.started.read_text().split()) if self.started.exists() else 0

    def wait_started(self, count: int) -> None:
        wait_until(lambda: self.bodies_started() >= count, f"{count} run(s) of gate to start")

    def open(self) -> None:
        self.release.touch()


# --- processes and waiting ------------------------------------------------------------------------


def _read_all(handle: Any) -> str:
    handle.seek(0)
    text = handle.read()
    handle.close()
    return text


def stop(project: Project, daemon: subprocess.Popen[str]) -> str:
    """SIGTERM a daemon started with `project.start`, as systemd stops it: it must exit 0.
    Returns what it wrote to stderr."""
    daemon.send_signal(signal.SIGTERM)
    done = project.finish(daemon)
    assert done.returncode == 0, done
    return done.stderr


def wait_until(predicate: Callable[[], T], what: str, timeout_s: float = DEADLINE_S) -> T:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout_s:g}s waiting for {what}")
        time.sleep(POLL_S)


def read_pid(path: Path) -> int:
    """The pid a job wrote to `path`, waiting for the file to appear."""
    wait_until(path.exists, f"{path.name} to be written")
    return int(path.read_text())


def process_gone(pid: int) -> bool:
    """True once `pid` no longer runs. A zombie counts as gone: it runs nothing, and it is
    whichever process adopted it (init or a subreaper) that reaps it, not the code under test."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def assert_processes_gone(pids: dict[str, int]) -> None:
    """Each named pid stops running within DEADLINE_S."""
    for name, pid in pids.items():
        wait_until(lambda pid=pid: process_gone(pid), f"the {name} (pid {pid}) to be gone")


def assert_one_line_error(done: Done, *fragments: str, exit_code: int = 2) -> None:
    """A user error: exit 2 (or the error's own code), exactly one line on stderr starting with
    'runner:', no traceback."""
    assert done.returncode == exit_code, done
    assert len(done.stderr_lines) == 1, done
    assert done.stderr_lines[0].startswith("runner: "), done
    assert "Traceback" not in done.stderr + done.stdout, done
    for fragment in fragments:
        assert fragment in done.stderr, f"{fragment!r} not in stderr\n{done}"


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster on a free port (tests/pgcluster.py), stopped afterwards."""
    from pgcluster import PgCluster

    instance = PgCluster()
    try:
        instance.start()
        yield instance
    finally:
        instance.close()
