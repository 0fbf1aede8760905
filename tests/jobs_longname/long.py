from __future__ import annotations

from runner import job


@job(name="j" * 300)
def too_long() -> str:
    return "never runs"
