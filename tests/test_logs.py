"""A run's log is capped at max_log_bytes (head and tail kept, the cut said), and `runner logs`
streams it in constant memory, also while following a run that is being cut."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

from conftest import COMMAND_TIMEOUT_S, Project, wait_until

MIB = 1024 * 1024
LINE = re.compile(rb"^line (\d{9}) x+$", re.MULTILINE)
CUT = re.compile(rb"----- runner: +(\d+) bytes of output cut here")


def configure(project: Project, cap: str, *, job_cap: str | None = None) -> None:
    project.configure("[job:loud]\n" + (f"max_log_bytes = {job_cap}\n" if job_cap else ""), max_log_bytes=cap)


def log_of(project: Project, run_id: int) -> Path:
    return Path(project.run_row(run_id)["log_path"])


def numbers(data: bytes) -> list[int]:
    return [int(n) for n in LINE.findall(data)]


def test_a_big_output_keeps_head_and_tail_within_the_cap(sqlite_project: Project) -> None:
    project = sqlite_project
    configure(project, "256KiB")
    done = project.runner("run", "loud", "-p", "megabytes=8", "--json")

    assert done.returncode == 0, done
    lines = done.json()["result"]
    data = log_of(project, 1).read_bytes()
    assert len(data) <= 256 * 1024 + 1024  # the cap, and the supervisor's first and last line
    head, cut_line, tail = re.split(rb"(----- runner: +\d+ bytes of output cut here.*\n)", data)
    first, last = numbers(head), numbers(tail)
    assert first == list(range(len(first))) and len(first) > 1000
    assert last == list(range(last[0], lines)) and len(last) > 1000  # nothing lost in the newest part
    cut = int(CUT.search(cut_line).group(1))
    kept_lines = len(first) + len(last)
    assert abs(cut - (lines - kept_lines) * 100) <= 200  # the cut count: the lines between (±2 partial)
    assert b"runner: run 1 succeeded in " in data.splitlines()[-1]


def test_output_below_the_cap_is_all_kept(sqlite_project: Project) -> None:
    project = sqlite_project
    configure(project, "4MiB")
    done = project.runner("run", "loud", "-p", "megabytes=1", "--json")

    assert done.returncode == 0, done
    data = log_of(project, 1).read_bytes()
    assert numbers(data) == list(range(done.json()["result"]))
    assert b"cut here" not in data


def test_a_job_section_sets_its_own_cap(sqlite_project: Project) -> None:
    project = sqlite_project
    configure(project, "0", job_cap="64KiB")  # no cap in [runner], 64 KiB for this job
    done = project.runner("run", "loud", "-p", "megabytes=2")

    assert done.returncode == 0, done
    assert log_of(project, 1).stat().st_size <= 64 * 1024 + 1024


def max_rss_kib(argv: list[str], env: dict[str, str]) -> int:
    """Run argv (output to /dev/null) from a fresh interpreter; return its peak resident memory."""
    probe = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_runner_logs_streams_a_big_log_in_constant_memory(sqlite_project: Project) -> None:
    project = sqlite_project
    project.configure("[job:loud]")  # the default cap, 50 MiB, keeps a 40 MiB log whole
    assert project.runner("run", "loud", "-p", "megabytes=0.01").returncode == 0
    assert project.runner("run", "loud", "-p", "megabytes=40").returncode == 0
    assert log_of(project, 2).stat().st_size > 40 * MIB

    small = max_rss_kib(project.argv(("logs", "1")), project.env())
    big = max_rss_kib(project.argv(("logs", "2")), project.env())
    follow = max_rss_kib(project.argv(("logs", "-f", "2")), project.env())

    print(f"max RSS of runner logs: {small} KiB (10 KiB log), {big} KiB (40 MiB), {follow} KiB (-f)")
    assert big < small + 8 * 1024, (small, big)  # KiB: 40 MiB of log costs less than 8 MiB more
    assert follow < small + 8 * 1024, (small, follow)


def test_following_a_run_that_is_being_cut(sqlite_project: Project) -> None:
    project = sqlite_project
    configure(project, "128KiB")
    run = project.start("run", "loud", "-p", "megabytes=3", "-p", "pause_every_mb=0.05", "-p", "pause_s=0.05")
    wait_until(lambda: list((project.root / "conf" / "var" / "log" / "loud").glob("*/1.log")), "the log")
    follow = project.runner("logs", "-f", "1")
    done = project.finish(run)

    assert done.returncode == 0, done
    assert follow.returncode == 0, follow
    seen = numbers(follow.stdout.encode())
    lines = int(3 * MIB / 100)
    assert seen[0] == 0 and seen[-1] == lines - 1
    assert all(b > a for a, b in itertools.pairwise(seen)), "lines repeated or out of order"
    assert "bytes of output cut here" in follow.stdout
