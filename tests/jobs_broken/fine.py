"""A healthy job beside a broken module."""

from __future__ import annotations

from runner import job


@job
def fine() -> str:
    """Succeed."""
    return "fine"
