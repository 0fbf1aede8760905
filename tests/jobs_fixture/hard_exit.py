"""Jobs that end their process without going back through Python's normal exit."""

from __future__ import annotations

import os
import signal
import sys

from runner import job


@job
def hard_exit(code: int = 7) -> None:
    """os._exit(code): no exception, no result message."""
    os._exit(code)


@job
def self_kill() -> None:
    """SIGKILL itself, the way the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


@job
def sys_exit(code: int = 0) -> None:
    """sys.exit(code), as a script ported to a job would."""
    sys.exit(code)
