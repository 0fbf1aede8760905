"""Jobs written the way a hostile (or careless) user would: they hold the database, leave their
process group and session, and end without returning."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from jobs_fixture.sleeper import write_pid
from runner import JobContext, job

ESCAPE_SECONDS = 300


@job
def hold_transaction(ctx: JobContext, pid_dir: Path, seconds: float = 300.0) -> str:
    """Write job state inside ctx.transaction() and keep the transaction open for `seconds`."""
    pid_dir.mkdir(parents=True, exist_ok=True)
    with ctx.transaction() as conn:
        ctx.state.set("k", 1, conn=conn)
        write_pid(pid_dir / "job.pid", os.getpid())
        time.sleep(seconds)
    return "held"


@job
def escaper(pid_dir: Path, seconds: float = 300.0) -> str:
    """Start a process in a new session and a double-forked, setsid daemon; record both pids."""
    pid_dir.mkdir(parents=True, exist_ok=True)
    marker = str(pid_dir)
    session = subprocess.Popen(
        ["sleep", str(ESCAPE_SECONDS)], start_new_session=True, stdin=subprocess.DEVNULL
    )
    write_pid(pid_dir / "session.pid", session.pid)
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "if os.fork(): os._exit(0)\n"
            "os.setsid()\n"
            "if os.fork(): os._exit(0)\n"
            "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
            f"time.sleep({ESCAPE_SECONDS})\n",
            str(pid_dir / "daemon.pid.tmp"),
            marker,
        ],
        stdin=subprocess.DEVNULL,
    )
    daemon.wait()
    while not (pid_dir / "daemon.pid.tmp").exists() or not (pid_dir / "daemon.pid.tmp").read_text():
        time.sleep(0.01)
    (pid_dir / "daemon.pid.tmp").rename(pid_dir / "daemon.pid")
    write_pid(pid_dir / "job.pid", os.getpid())
    time.sleep(seconds)
    return "escaped"


@job
def exit_mid_files(ctx: JobContext, out: Path, after: int = 1) -> None:
    """Process `after` files through ctx.files(), then end the process without returning."""
    for count, path in enumerate(ctx.files(), start=1):
        with open(out, "a") as handle:
            handle.write(f"{path.name}\n")
        if count == after:
            os._exit(0)
