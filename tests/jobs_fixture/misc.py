"""Jobs for parameter handling, secrets and odd results."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from runner import JobContext, job


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


@job
def tidy(folder: Path = Path("exports"), older_than_days: int = 30) -> str:
    """Return the folder it would tidy (a Path default, for --help)."""
    return str(folder)


@job
def odd_values(ctx: JobContext, fail: bool = False) -> dict[str, object]:
    """Return (and keep in ctx.state) values JSON cannot hold as they are: NaN, infinities, NumPy,
    Decimal, dates, bytes, sets, undecodable file names; return the state the previous run kept.
    With fail, raise an error whose message holds a NUL and an undecodable file name."""
    import numpy as np

    previous = ctx.state.get("odd")
    odd = {
        "nan": float("nan"),
        "inf": float("inf"),
        "-inf": float("-inf"),
        "np_mean": np.array([1.0, 2.0]).mean(),
        "np_int": np.int64(7),
        "np_nan": np.float32("nan"),
        "np_array": np.array([[1.5, np.nan], [np.inf, 2]]),
        "decimal": Decimal("1.10"),
        "when": datetime(2026, 11, 26, 12, 30, tzinfo=UTC),
        "day": date(2026, 11, 26),
        "bytes": b"ab\xff",
        "set": {3, 1, 2},
        "tuple": (1, "a"),
        "name": os.fsdecode(b"caf\xe9.jpg"),
        7: "int key",
    }
    if fail:
        raise RuntimeError(f"bad\x00byte in {odd['name']}")
    ctx.state["odd"] = odd
    return {"value": odd, "previous": previous}
