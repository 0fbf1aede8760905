"""A job whose body raises."""

from __future__ import annotations

from runner import job


def _inner(message: str) -> None:
    raise RuntimeError(message)


@job
def fail(message: str = "boom") -> None:
    """Raise RuntimeError(message) from a nested call, so the traceback has frames."""
    _inner(message)
