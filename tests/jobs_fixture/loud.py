"""Prints a lot: numbered 100-byte lines on stdout and stderr, for the log cap tests."""

from __future__ import annotations

import sys
import time

from runner import job

LINE_BYTES = 100


@job
def loud(megabytes: float = 1.0, pause_every_mb: float = 0.0, pause_s: float = 0.0) -> int:
    """Print `megabytes` of numbered lines, alternating stdout and stderr, pausing `pause_s` after
    every `pause_every_mb`; return how many lines."""
    lines = int(megabytes * 1024 * 1024 / LINE_BYTES)
    pause_every = int(pause_every_mb * 1024 * 1024 / LINE_BYTES)
    for number in range(lines):
        stream = sys.stderr if number % 2 else sys.stdout
        stream.write(f"line {number:09d} ".ljust(LINE_BYTES - 1, "x") + "\n")
        if pause_every and number % pause_every == pause_every - 1:
            stream.flush()
            time.sleep(pause_s)
    return lines
