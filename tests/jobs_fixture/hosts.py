"""Jobs for the several-hosts tests: each records which host served which fire, and whether two
runs of it ever ran at the same time (all the "hosts" share this machine's file system)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from runner import JobContext, job


def _record(out: Path, ctx: JobContext, what: str) -> None:
    with out.open("a", encoding="utf-8") as handle:
        handle.write(f"{ctx.fire.key} {socket.gethostname()} {ctx.run_id} {what}\n")


@job
def host_work(ctx: JobContext, out: Path, slow_on: str = "", seconds: float = 120.0) -> str:
    """Record the fire; on host `slow_on` take `seconds` over it (the host a test kills)."""
    _record(out, ctx, "start")
    if socket.gethostname() == slow_on:
        time.sleep(seconds)
    _record(out, ctx, "end")
    return socket.gethostname()


@job
def exclusive(ctx: JobContext, out: Path, marker: Path, seconds: float = 2.0) -> str:
    """Hold `marker` (created exclusively) for `seconds`; a run that finds it taken records
    'overlap': another run of this job was running at the same time."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        _record(out, ctx, "overlap")
        time.sleep(seconds)
        return "overlap"
    os.close(fd)
    _record(out, ctx, "start")
    try:
        time.sleep(seconds)
    finally:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
    return socket.gethostname()
