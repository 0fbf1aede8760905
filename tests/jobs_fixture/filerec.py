"""A watch job that records every file it is handed, one line each, as it finishes it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner import JobContext, job


@job
def filerec(ctx: JobContext, out: Path, per_file_s: float = 0.0) -> int:
    """Append 'name size' for each file of the run to `out` (one write per line)."""
    count = 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for path in ctx.files():
            if per_file_s:
                time.sleep(per_file_s)
            os.write(fd, f"{path.name} {path.stat().st_size}\n".encode())
            count += 1
    finally:
        os.close(fd)
    return count


@job(retries=1, retry_backoff="0.1s")
def flaky_files(ctx: JobContext, out: Path, fail_after: int = 3) -> int:
    """Like filerec, but the first attempt fails after `fail_after` files."""
    count = 0
    with out.open("a", encoding="utf-8") as handle:
        for path in ctx.files():
            if ctx.attempt == 1 and count == fail_after:
                raise RuntimeError(f"failing after {count} files, as asked")
            handle.write(f"{path.name} {ctx.attempt}\n")
            handle.flush()
            count += 1
    return count


@job
def picky(ctx: JobContext, out: Path) -> int:
    """Like filerec, but raises on any file whose name starts with 'bad'."""
    count = 0
    with out.open("a", encoding="utf-8") as handle:
        for path in ctx.files():
            if path.name.startswith("bad"):
                raise ValueError(f"cannot handle {path.name}")
            handle.write(f"{path.name}\n")
            handle.flush()
            count += 1
    return count


@job
def filegate(ctx: JobContext, out: Path, started: Path, release: Path) -> int:
    """Append this process's pid to `started`, wait until `release` exists, then record the
    run's files as filerec does (a run the test can catch in the middle)."""
    with open(started, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    while not release.exists():
        time.sleep(0.05)
    return filerec(ctx, out)
