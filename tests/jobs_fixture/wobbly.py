"""Prints a few numbered lines, then succeeds or fails as told: the target of notification tests."""

from __future__ import annotations

import time

from runner import job


@job
def wobbly(fail: bool = False, lines: int = 3, seconds: float = 0.0) -> str:
    """Print `lines` lines, sleep `seconds`, then raise if `fail`."""
    for number in range(1, lines + 1):
        print(f"flaky line {number}", flush=True)
    time.sleep(seconds)
    if fail:
        raise RuntimeError("flaky was told to fail")
    return "fine"
