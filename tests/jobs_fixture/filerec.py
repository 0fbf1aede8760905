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
