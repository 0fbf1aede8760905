"""Keep every process a job starts within reach, so a timeout, a stop or the end of a run can kill
them all — including those that left the job's process group or session (setsid, double fork).

- **subreaper** (always): the supervisor and the job's group leader are child subreapers, so a
  process that double-forks or calls setsid is re-parented to the leader (or, if the leader is
  gone, to the supervisor) instead of to init. They walk their process trees and kill them: the
  supervisor on timeout, stop and run end; the leader when the supervisor dies.
- **cgroup** (`[runner] contain = cgroup`, where cgroup v2 is writable by us: root, or a systemd
  unit with `Delegate=yes`): each attempt also gets its own cgroup, which the group leader joins
  before the job starts. Nothing a process does takes it out, so `cgroup.kill` kills them all even
  when the supervisor and the leader were both killed. Off by default: moving a process into a
  cgroup stalls every fork on the machine for a moment (the kernel's cgroup migration lock), which
  made a busy daemon's fires 5-10x later in bench/dispatch.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from pathlib import Path

from runner.prctl import become_subreaper

CGROUP_PREFIX = "runner-run-"
KILL_WAIT_S = 5.0  # how long kill_all() waits for the processes it killed to be gone
_counter = itertools.count(1)


class Containment:
    """The processes of one attempt: its cgroup (or None) and its job process (group leader)."""

    def __init__(self, cgroup: Path | None) -> None:
        self.cgroup = cgroup
        self.job_pid: int | None = None

    @property
    def mechanism(self) -> str:
        return "cgroup" if self.cgroup is not None else "subreaper"

    @classmethod
    def create(cls, *, cgroup: bool = False) -> Containment:
        """In the supervisor, before forking the job: become a subreaper; with `cgroup`, make the
        attempt a cgroup if we can (`[runner] contain = cgroup`)."""
        become_subreaper()
        return cls(_new_cgroup() if cgroup else None)

    def join(self) -> None:
        """In the job process, before the job body: move into the cgroup (nothing on failure)."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                (self.cgroup / "cgroup.procs").write_text("0")

    def alive(self) -> bool:
        """Is any process of this attempt still there?"""
        return bool(self.pids())

    def pids(self) -> list[int]:
        pids: list[int] = []
        if self.cgroup is not None:
            pids += cgroup_pids(self.cgroup)
        if self.job_pid:
            pids += [p for p in group_pids(self.job_pid) if p not in pids]
        pids += [p for p in descendants(os.getpid()) if p not in pids]
        return pids

    def kill_all(self) -> None:
        """SIGKILL every process of the attempt and wait (bounded) until they are gone."""
        kill_processes(self.cgroup, self.job_pid, include_descendants=True)

    def close(self) -> None:
        """Remove the (empty) cgroup."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()


def kill_processes(cgroup: Path | None, job_pid: int | None, *, include_descendants: bool = False) -> bool:
    """SIGKILL what is left of a run: its cgroup, its job's process group (and, in the supervisor,
    its own descendants). True when all of them are gone within KILL_WAIT_S."""
    deadline = time.monotonic() + KILL_WAIT_S
    while True:
        left = []
        if cgroup is not None and cgroup.is_dir():
            left += cgroup_pids(cgroup)
            if left:
                try:
                    (cgroup / "cgroup.kill").write_text("1")
                except OSError:  # kernel before 5.14: one by one
                    _kill(left)
        if job_pid:
            members = group_pids(job_pid)  # zombies left for an init that does not reap are gone
            if members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job_pid, signal.SIGKILL)
                left += members
        if include_descendants:
            children = descendants(os.getpid())
            _kill(children)
            left += children
            _reap_children()
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def descendants(pid: int) -> list[int]:
    """Every living descendant of pid (read from /proc/PID/task/*/children), excluding zombies."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    if not _zombie(child):
                        found.append(child)
                    todo.append(child)
    return found


def group_pids(pgid: int) -> list[int]:
    """The living processes of a process group (empty when the group is gone)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat and int(stat[2]) == pgid and stat[0] != "Z":
                pids.append(int(entry))
    return pids


def cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _new_cgroup() -> Path | None:
    """A new child of our own cgroup v2, or None when cgroup v2 is not mounted or not ours to write."""
    base = _own_cgroup()
    if base is None:
        return None
    path = base / f"{CGROUP_PREFIX}{os.getpid()}-{next(_counter)}"
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        pass
    except OSError:
        return None
    if not os.access(path / "cgroup.procs", os.W_OK):
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
    return path


_own: dict[int, Path | None] = {}  # per process: where this process's cgroup is


def _own_cgroup() -> Path | None:
    pid = os.getpid()
    if pid not in _own:
        _own[pid] = _find_own_cgroup()
    return _own[pid]


def _find_own_cgroup() -> Path | None:
    mount = _cgroup2_mount()
    if mount is None:
        return None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            own = mount / line[3:].lstrip("/")
            # A cgroup we made for an earlier run of this process is not a parent for the next.
            while own.name.startswith(CGROUP_PREFIX):
                own = own.parent
            return own if os.access(own, os.W_OK) else None
    return None


def _cgroup2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _reap_children() -> None:
    """Collect exited children that the subreaper inherited (never the ones it waits for itself:
    those are collected by pid; this only takes any child that is already a zombie)."""
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _zombie(pid: int) -> bool:
    stat = _stat(pid)
    return stat is None or stat[0] == "Z"
