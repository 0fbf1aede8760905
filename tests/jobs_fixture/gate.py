"""Holds a run open until the test releases it, so overlap can be observed without timing guesses."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner import job

POLL_S = 0.05
GIVE_UP_S = 60.0


@job
def gate(started: Path, release: Path) -> int:
    """Append this process's pid to `started`, then wait until the file `release` exists."""
    with open(started, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    give_up = time.monotonic() + GIVE_UP_S
    while not release.exists():
        if time.monotonic() > give_up:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(POLL_S)
    return os.getpid()
