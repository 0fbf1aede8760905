"""Starts a grandchild process, records both pids, then sleeps: the target of timeouts and kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner import job


def write_pid(path: Path, pid: int) -> None:
    """Write atomically, so a test never reads half a pid."""
    partial = path.with_suffix(".tmp")
    partial.write_text(str(pid))
    partial.rename(path)


@job
def sleeper(pid_dir: Path, seconds: float = 300.0, ignore_term: bool = False) -> str:
    """Start a grandchild that would live 300 s, then sleep `seconds`.

    The grandchild's command line names pid_dir, so the test's clean-up can find it.
    """
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid_dir.mkdir(parents=True, exist_ok=True)
    grandchild = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", str(pid_dir)],
        stdin=subprocess.DEVNULL,
    )
    write_pid(pid_dir / "grandchild.pid", grandchild.pid)
    write_pid(pid_dir / "job.pid", os.getpid())
    time.sleep(seconds)
    return "slept"
