"""A scheduled no-op that records each fire it served, for the daemon and cron tests."""

from __future__ import annotations

import time
from pathlib import Path

from runner import JobContext, job


@job
def tick(ctx: JobContext, out: Path, seconds: float = 0.0) -> str:
    """Append 'fire-key kind late' to `out`, then sleep `seconds`."""
    with out.open("a", encoding="utf-8") as handle:
        handle.write(f"{ctx.fire.key} {ctx.fire.kind} {ctx.fire.late}\n")
    time.sleep(seconds)
    return ctx.fire.key


@job
def chatty(ctx: JobContext, items: int = 20, pause_s: float = 0.05) -> int:
    """Log one line per item while a progress bar runs over the items."""
    for index in ctx.progress(range(items), label="chatty"):
        ctx.log.info("item %d", index)
        time.sleep(pause_s)
    return items
