"""Jobs for parameter handling, secrets and odd results."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from runner import job


@job
def secretive(api_token: str = "", password: str = "", region: str = "eu") -> str:
    """Take credentials from the config file."""
    return region


@job
def write_file(out: Path, text: str = "written") -> str:
    """Write `text` to `out` and return the absolute path written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return str(out.resolve())


@job
def typed(
    day: date,
    flag: bool = False,
    ids: list[int] | None = None,
    ratio: float = 1.0,
) -> dict[str, object]:
    """Echo typed parameters as the job received them (types included)."""
    return {
        "day": day.isoformat(),
        "flag": flag,
        "ids": ids,
        "ratio": ratio,
        "types": [type(day).__name__, type(flag).__name__, type(ratio).__name__],
    }


@job
def big_result(size: int = 300_000) -> str:
    """Return a result larger than a pipe buffer."""
    return "x" * size


@job
def unjsonable() -> set[int]:
    """Return something JSON cannot hold."""
    return {1, 2}


@job
def connects(db_url: str = "postgresql://app:default-pw@db/app", mirrors: list[str] | None = None) -> str:
    """Take a URL with a password; return the password part's length only."""
    return str(len(db_url))
