"""Several hosts on one PostgreSQL database: every fire once, a host that dies holding a run, a
host whose clock is minutes off.

Each "host" is a real `runner daemon` in its own UTS and PID namespaces (`unshare`): its own host
name and its own pids, so the others can judge it only by what it wrote to the database, as on
separate machines. Killing the namespace's first process kills every process of that host at
once, the job included: the host died. A wrong clock is time-machine moving the wall clock of
every Python process of that host (tests/clock_ahead/sitecustomize.py)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import DEADLINE_S, TESTS_DIR, Project, postgres_schema, wait_until

# How long three hosts fire `every 1s` together; the check is 60 (RUNNER_TEST_HOSTS_S=60).
CLOCK_AHEAD_DIR = TESTS_DIR / "clock_ahead"
HOSTS_S = float(os.environ.get("RUNNER_TEST_HOSTS_S", "20"))
HEARTBEAT_S = 0.5
STALE_AFTER_S = 3.0
AHEAD_S = 300.0  # the wrong clock: five minutes fast (or slow)


# --- hosts ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def namespaces() -> None:
    """Separate hosts on one machine need new UTS and PID namespaces: root and `unshare`."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("several hosts on one machine need root and unshare (util-linux)")
    probe = ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "true"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"cannot make namespaces here: {done.stderr.strip()}")


def clock_ahead(seconds: float) -> dict[str, str]:
    """The environment of a host whose wall clock is `seconds` fast (tests/clock_ahead)."""
    return {
        "RUNNER_TEST_CLOCK_AHEAD_S": str(seconds),
        "PYTHONPATH": os.pathsep.join([str(CLOCK_AHEAD_DIR), str(TESTS_DIR)]),
    }


@pytest.fixture
def pg_project(tmp_path: Path, namespaces: None) -> Iterator[Project]:
    """A project on a fresh schema of the test PostgreSQL: the database every host shares."""
    with postgres_schema() as url:
        project = Project(tmp_path / "project", url)
        yield project
        project.cleanup()


class Host:
    """`runner daemon` on a host of its own: `sh` (naming the host) is the first process of a new
    PID namespace, and the daemon its child."""

    def __init__(self, project: Project, name: str, env: dict[str, str]) -> None:
        self.project = project
        self.name = name
        script = 'hostname "$0" && "$@"'
        argv = ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child"]
        self.process = subprocess.Popen(
            [*argv, "sh", "-c", script, name, *project.argv(("daemon",))],
            stdout=subprocess.DEVNULL,
            stderr=(project.root / f"{name}.log").open("w"),
            env=project.env(**env),
            cwd=project.root,
            stdin=subprocess.DEVNULL,
        )
        project._processes.append(self.process)  # killed by the fixture's clean-up if still up

    def _tree(self) -> list[int]:
        """Every process under `unshare`, parents before children."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop(0)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            found.append(pid)
            todo.extend(int(c) for c in children)
        return found[1:]

    def daemon_pid(self) -> int:
        def topmost_daemon() -> int | None:
            for pid in self._tree():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if len(argv) > 1 and argv[1].endswith(b"/runner") and b"daemon" in argv:  # python .../runner
                    return pid
            return None

        return wait_until(topmost_daemon, f"the daemon of {self.name}")

    def stop(self) -> None:
        """SIGTERM the daemon, as systemd stops it; it must exit 0."""
        os.kill(self.daemon_pid(), signal.SIGTERM)
        assert self.process.wait(timeout=DEADLINE_S * 2) == 0, self.log()

    def die(self) -> None:
        """The host dies: SIGKILL its namespace's first process, which kills every process in it."""
        os.kill(self._tree()[0], signal.SIGKILL)
        self.process.wait(timeout=DEADLINE_S)

    def log(self) -> str:
        return (self.project.root / f"{self.name}.log").read_text(errors="replace")


def start_hosts(
    project: Project, names: str, envs: dict[str, dict[str, str]] | None = None
) -> dict[str, Host]:
    hosts = {name: Host(project, f"host-{name}", (envs or {}).get(name, {})) for name in names}
    wait_until(
        lambda: (
            {d["host"] for d in project.runner("status", "--json").json()["daemons"]}
            >= {h.name for h in hosts.values()}
        ),
        "every host's daemon to be up",
        timeout_s=DEADLINE_S * 2,
    )
    return hosts


def configure(project: Project, job: str, **runner: str) -> None:
    project.configure(
        job,
        timezone="UTC",
        heartbeat=f"{HEARTBEAT_S}s",
        stale_after=f"{STALE_AFTER_S}s",
        shutdown_grace="5s",
        **runner,
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def key(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def served(out: Path) -> list[list[str]]:
    """The job's own record: fire key, host, run id, what (start / end / overlap)."""
    return [line.split() for line in out.read_text().splitlines()] if out.exists() else []


# --- the tests ------------------------------------------------------------------------------------


def test_three_hosts_run_each_fire_once(pg_project: Project) -> None:
    project = pg_project
    out = project.root / "served.txt"
    configure(project, f"[job:tick]\nuses = jobs_fixture.ticks:tick\nschedule = every 1s\nout = {out}\n")
    hosts = start_hosts(project, "abc")
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    time.sleep(HOSTS_S + 2)
    last = first + timedelta(seconds=HOSTS_S - 1)
    for host in hosts.values():
        host.stop()
    rows = [r for r in project.history("tick") if first <= at(r["scheduled_at"]) <= last]
    expected = {key(first + timedelta(seconds=n)) for n in range(int(HOSTS_S))}
    keys = Counter(r["fire_key"] for r in rows)
    assert set(keys) == expected, sorted(expected ^ set(keys))  # every second has its row ...
    assert max(keys.values()) == 1, keys.most_common(3)  # ... one only
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    # A loaded machine may make a run overlap the next fire (recorded skipped); never more than that.
    assert len(succeeded) >= len(expected) - 2, [(r["fire_key"], r["status"], r["error"]) for r in rows]
    lines = [fields for fields in Counter(line[0] for line in served(out)).items() if fields[0] in expected]
    assert all(n == 1 for _, n in lines), lines  # the job body ran once per fire too


def test_a_host_that_dies_mid_run_is_lost_then_retried_once_by_a_survivor(pg_project: Project) -> None:
    project = pg_project
    out = project.root / "served.txt"
    configure(
        project,
        f"""
        [job:work]
        uses = jobs_fixture.hosts:host_work
        schedule = every 1s
        overlap = allow
        retries = 1
        out = {out}
        slow_on = host-a
        """,
    )
    hosts = start_hosts(project, "abc")
    wait_until(
        lambda: sum(1 for f in served(out) if f[1] == "host-a" and f[3] == "start") >= 2,
        "host-a to be in the middle of runs",
    )
    hosts["a"].die()
    died = datetime.now(UTC)

    def retried() -> bool:
        rows = project.history("work")
        lost = [r for r in rows if r["status"] == "lost"]
        done = {(r["fire_key"], r["attempt"]) for r in rows if r["status"] == "succeeded"}
        return bool(lost) and all((r["fire_key"], r["attempt"] + 1) in done for r in lost)

    wait_until(retried, "host-a's runs to be lost and retried", timeout_s=DEADLINE_S * 2)
    time.sleep(3)  # the survivors keep the schedule
    hosts["b"].stop()
    hosts["c"].stop()
    rows = project.history("work")

    lost = [r for r in rows if r["status"] == "lost"]
    assert lost and all(r["host"] == "host-a" for r in lost), lost
    for r in lost:
        # lost once its heartbeat is stale on the database's clock: not before, and not much after
        after_s = (at(r["ended_at"]) - died).total_seconds()
        assert STALE_AFTER_S - HEARTBEAT_S - 0.5 <= after_s <= STALE_AFTER_S + 10, (after_s, r)
        retries = [x for x in rows if x["fire_key"] == r["fire_key"] and x["attempt"] == r["attempt"] + 1]
        assert len(retries) == 1, retries  # once, not once per survivor
        assert retries[0]["status"] == "succeeded" and retries[0]["host"] in ("host-b", "host-c"), retries
        assert retries[0]["first_run_id"] == r["first_run_id"], retries
    attempts = Counter((r["fire_key"], r["attempt"]) for r in rows)
    assert max(attempts.values()) == 1, attempts.most_common(3)

    # the schedule went on: between the first and the last fire, no gap of more than two seconds
    done_keys = sorted({at(r["fire_key"]) for r in rows if r["status"] == "succeeded"})
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(done_keys)]
    assert max(gaps) <= 2, [(key(a), g) for a, g in zip(done_keys, gaps, strict=False) if g > 2]


@pytest.mark.parametrize("off_s", [AHEAD_S, -AHEAD_S], ids=["fast", "slow"])
def test_a_host_five_minutes_off_steals_nothing_and_loses_nothing(pg_project: Project, off_s: float) -> None:
    project = pg_project
    out = project.root / "served.txt"
    configure(
        project,
        f"""
        [job:excl]
        uses = jobs_fixture.hosts:exclusive
        schedule = every 2s
        retries = 1
        seconds = 15
        out = {out}
        marker = {project.root / "running"}
        """,
    )
    hosts = start_hosts(project, "ab")
    wait_until(lambda: any(f[3] == "start" for f in served(out)), "a run on host-a or host-b")
    hosts |= start_hosts(project, "c", {"c": clock_ahead(off_s)})  # ... joins while it runs
    daemons = {d["host"]: d for d in project.runner("status", "--json").json()["daemons"]}
    assert abs(daemons["host-c"]["clock_offset_s"] - off_s) < 10, daemons["host-c"]
    assert abs(daemons["host-a"]["clock_offset_s"]) < 1, daemons["host-a"]
    status = project.runner("status")
    line_c = next(line for line in status.stdout.splitlines() if " host-c " in line)
    way = "ahead" if off_s > 0 else "behind"
    assert re.search(rf" 30\ds {way} | 29\ds {way} ", line_c), status  # the table says it too
    time.sleep(HOSTS_S)
    for host in hosts.values():
        host.stop()
    now = datetime.now(UTC)
    rows = project.history("excl")

    # nobody's run was called lost (a run marked lost that then ends gets its true outcome: the
    # daemons' logs keep the false verdict)
    assert not [r for r in rows if r["status"] == "lost"], rows
    assert not [h.name for h in hosts.values() if "marked lost" in h.log()], {
        h.name: h.log() for h in hosts.values()
    }
    overlaps = [f for f in served(out) if f[3] == "overlap"]
    assert not overlaps, overlaps  # no lease was taken from a live run
    ran = Counter(r["fire_key"] for r in rows if r["status"] not in ("skipped",))
    assert ran and max(ran.values()) == 1, ran.most_common(3)  # no fire ran twice
    # the off host fired on the database's clock: no fire of the future was claimed, and every
    # run started near its fire's instant (not five minutes early or late)
    assert max(at(r["fire_key"]) for r in rows) <= now + timedelta(seconds=2), rows[-3:]
    adrift = [
        (r["host"], r["fire_key"], r["started_at"])
        for r in rows
        if r["started_at"] and abs((at(r["started_at"]) - at(r["scheduled_at"])).total_seconds()) > 60
    ]
    assert not adrift, adrift
