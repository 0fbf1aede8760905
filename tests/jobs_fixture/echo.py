"""Returns its parameters, so a test can see what the config and the command line resolved to."""

from __future__ import annotations

from runner import job


@job
def echo(text: str = "", other: str = "") -> dict[str, str]:
    """Return the text parameters unchanged."""
    return {"text": text, "other": other}
