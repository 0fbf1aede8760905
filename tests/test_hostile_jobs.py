"""A job is someone else's code: it holds the database, ignores SIGTERM, leaves its process group
and session, ends without returning. The engine's guarantees hold anyway."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import DEADLINE_S, Project, assert_processes_gone, process_gone, read_pid, wait_until

from runner.containment import descendants


def _configure(project: Project, job: str, *, timeout: str | None = None, extra: str = "") -> None:
    lines = [f"[job:{job}]", f"pid_dir = {project.pid_dir()}"]
    if timeout:
        lines.append(f"timeout = {timeout}")
    # Heartbeats well inside the timeout: each one is a write the job's transaction could block.
    project.configure("\n".join(lines) + "\n" + extra, heartbeat="200ms", stale_after="30s")


def _escaper_pids(project: Project) -> dict[str, int]:
    pids = {name: read_pid(project.pid_dir() / f"{name}.pid") for name in ("job", "session", "daemon")}
    for name, pid in pids.items():
        assert not process_gone(pid), f"the {name} process (pid {pid}) should still be running"
    return pids


def test_a_job_holding_its_own_transaction_still_times_out(project: Project) -> None:
    _configure(project, "hold_transaction", timeout="3s")

    done = project.runner("run", "hold_transaction")

    assert done.returncode == 1, done
    row = project.only_run()
    assert row["status"] == "timed_out", row
    assert row["duration_s"] < 60, row  # the job would have held its transaction for 300 s


def test_sigterm_reaches_a_job_holding_its_own_transaction(project: Project) -> None:
    _configure(project, "hold_transaction")
    supervisor = project.start("run", "hold_transaction")
    pid = wait_until(
        lambda: (project.pid_dir() / "job.pid").exists() and read_pid(project.pid_dir() / "job.pid"),
        "the job",
    )

    supervisor.send_signal(signal.SIGTERM)
    done = project.finish(supervisor)

    assert done.returncode == 128 + signal.SIGTERM, done
    assert_processes_gone({"job": pid})
    assert project.only_run()["status"] == "killed"


def test_a_job_holding_its_own_transaction_does_not_hold_up_other_runs(project: Project) -> None:
    """Job data lives apart from the run history (a second SQLite file; row locks on PostgreSQL),
    so other runs start, record and end while a job sits in its own write transaction."""
    project.configure(f"[job:hold_transaction]\npid_dir = {project.pid_dir()}\n\n[job:echo]\n")
    holder = project.start("run", "hold_transaction")
    wait_until(lambda: (project.pid_dir() / "job.pid").exists(), "the job to open its transaction")

    others = [project.runner("run", "echo", "-p", f"text={n}") for n in range(3)]

    holder.send_signal(signal.SIGTERM)
    project.finish(holder)
    assert [done.returncode for done in others] == [0, 0, 0], others
    statuses = {row["job"]: row["status"] for row in project.history() if row["job"] == "echo"}
    assert statuses == {"echo": "succeeded"}


@pytest.mark.parametrize("ignore_term", [False, True], ids=["plain", "ignores-sigterm"])
def test_a_killed_supervisor_never_leaves_its_job_running_beside_the_next(
    project: Project, ignore_term: bool
) -> None:
    project.configure(f"[job:sleeper]\npid_dir = {project.pid_dir()}\ntimeout = 3s\n")
    first = project.start("run", "sleeper", "-p", f"ignore_term={ignore_term}")
    pids = {
        "job process": wait_until(lambda: _pid_if_written(project.pid_dir() / "job.pid"), "the job"),
        "grandchild": read_pid(project.pid_dir() / "grandchild.pid"),
    }

    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=DEADLINE_S)
    assert_processes_gone(pids)
    second = project.runner("run", "sleeper", "-p", "seconds=0", "-p", f"pid_dir={project.pid_dir('again')}")

    assert second.returncode == 0, second
    rows = project.history()
    assert [row["status"] for row in rows] == ["lost", "succeeded"], rows
    assert f"pid {first.pid}" in rows[0]["error"]


def _pid_if_written(path: Path) -> int | None:
    return read_pid(path) if path.exists() else None


@pytest.mark.parametrize("ending", ["timeout", "job-returns", "stop"])
def test_processes_that_left_the_group_and_session_are_killed(project: Project, ending: str) -> None:
    timeout = "3s" if ending == "timeout" else None
    _configure(project, "escaper", timeout=timeout)
    args = ["run", "escaper"] + (["-p", "seconds=1"] if ending == "job-returns" else [])
    supervisor = project.start(*args)
    wait_until(lambda: (project.pid_dir() / "job.pid").exists(), "the job to start its escapees")
    pids = (
        _escaper_pids(project)
        if ending != "job-returns"
        else {name: read_pid(project.pid_dir() / f"{name}.pid") for name in ("session", "daemon")}
    )
    if ending == "stop":
        supervisor.send_signal(signal.SIGTERM)
    done = project.finish(supervisor)

    assert_processes_gone(pids)
    expected = {"timeout": "timed_out", "job-returns": "succeeded", "stop": "killed"}[ending]
    assert project.only_run()["status"] == expected, done


def _cgroup_v2_writable() -> bool:
    from runner.containment import Containment

    containment = Containment.create(cgroup=True)
    try:
        return containment.cgroup is not None
    finally:
        containment.close()


@pytest.mark.parametrize("contain", ["subreaper", "cgroup"])
def test_escaped_processes_die_with_a_killed_supervisor(project: Project, contain: str) -> None:
    """The group leader is a subreaper: a double-forked, setsid'd process is its child, and dies
    with it when the supervisor is killed; a cgroup (where one can be made) holds them anyway."""
    if contain == "cgroup" and not _cgroup_v2_writable():
        pytest.skip("cgroup v2 is not writable here: only the subreaper mechanism applies (see README)")
    _configure(project, "escaper")
    project.configure(
        f"[job:escaper]\npid_dir = {project.pid_dir()}\n",
        contain=contain,
        heartbeat="200ms",
        stale_after="30s",
    )
    supervisor = project.start("run", "escaper")
    wait_until(lambda: (project.pid_dir() / "job.pid").exists(), "the job to start its escapees")
    pids = _escaper_pids(project)

    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(timeout=DEADLINE_S)

    assert_processes_gone(pids)
    assert project.only_run()["status"] == "lost"


def test_a_supervisor_in_another_pid_namespace_is_not_declared_dead(project: Project) -> None:
    """Containers sharing the host's name (host networking) on one database: the pid of a live
    supervisor there means nothing here, so only its heartbeat age may decide."""
    if subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a PID namespace here (needs root and unshare)")
    project.configure(f"[job:sleeper]\npid_dir = {project.pid_dir()}\n", stale_after="60s")
    # Inside, the supervisor gets a pid that no process has out here (the first free one above
    # a number far from ours), as a container's processes would.
    inside_pid = _free_pid()
    script = f'echo {inside_pid - 1} > /proc/sys/kernel/ns_last_pid; "$@" & wait'
    inside = subprocess.Popen(
        ["unshare", "-p", "-f", "--mount-proc", "sh", "-c", script, "sh", *project.argv(("run", "sleeper"))],
        env=project.env(),
        cwd=project.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: (project.pid_dir() / "job.pid").exists(), "the job in the namespace")
        row = project.only_run()  # `runner history` reaps first: it must not conclude anything
        assert row["pid"] == inside_pid, row
        assert row["status"] == "running", row
        assert not Path(f"/proc/{inside_pid}").exists(), "that pid means nothing out here"
        second = project.runner("run", "sleeper", "-p", "seconds=0", "-p", f"pid_dir={project.pid_dir('2')}")
        assert second.returncode == 3, second  # overlap = skip: the first still holds the lease
    finally:
        for pid in descendants(inside.pid):  # unshare does not forward signals
            if _pid_inside(pid) == inside_pid:
                os.kill(pid, signal.SIGTERM)
        inside.wait(timeout=DEADLINE_S)
        inside.stderr.close()
    assert project.history()[0]["status"] == "killed"


def _free_pid() -> int:
    pid = 54_321
    while Path(f"/proc/{pid}").exists():
        pid += 17
    return pid


def _pid_inside(pid: int) -> int | None:
    """The pid this process has in its own (innermost) PID namespace."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[-1]) for line in lines if line.startswith("NSpid:")), None)


def test_a_job_ending_without_returning_settles_only_the_files_it_acknowledged(
    sqlite_project: Project,
) -> None:
    project = sqlite_project
    inbox = project.root / "inbox"
    inbox.mkdir(parents=True)
    out = project.root / "seen.txt"
    project.configure(
        f"[job:mid]\nuses = jobs_fixture.hostile:exit_mid_files\nwatch = {inbox}\nout = {out}\nafter = 2\n"
    )
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (inbox / name).write_text(name)

    done = project.runner("run", "mid")

    assert done.returncode == 0, done  # os._exit(0): the process says it succeeded
    assert len(out.read_text().splitlines()) == 2
    from runner.store import Store

    store = Store(project.database_url)
    try:
        states = store.files.counts("mid")
    finally:
        store.engine.dispose()
    assert states.get("done", 0) <= 1, states  # at most the one it acknowledged by asking for the next
    assert states.get("pending", 0) >= 3, states  # never reached (or never acknowledged): offered again
