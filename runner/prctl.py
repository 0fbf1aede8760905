"""The Linux prctl(2) calls supervision relies on, defined once: a parent-death signal and the
child-subreaper flag. Both are best effort: without prctl (not Linux) nothing happens."""

from __future__ import annotations

import contextlib

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send `signum` to this process when its parent dies."""
    _prctl(PR_SET_PDEATHSIG, int(signum))


def become_subreaper() -> None:
    """Orphaned descendants (a double fork, setsid) are re-parented to this process, not to init."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
