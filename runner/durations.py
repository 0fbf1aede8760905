"""Durations as the INI and the CLI write them ('90s', '1h30m', '500ms') <-> seconds.

A leaf: standard library only, so config, triggers and every other module can import it."""

from __future__ import annotations

import re

# The longest duration or interval any setting takes (a year and a day): beyond it a value is a
# typo, and some would overflow dates.
MAX_DURATION_S = 366 * 86400.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class DurationTooLong(ValueError):
    """A well-formed duration beyond MAX_DURATION_S."""


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '1h30m', '500ms', '1d' or a bare number of seconds -> seconds."""
    text = text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos and text[pos : match.start()].strip():
                break
            value += float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]
            pos = match.end()
        if pos == 0 or text[pos:].strip():
            raise ValueError(text) from None
    if value < 0 or value != value:
        raise ValueError(text)
    if value > MAX_DURATION_S:
        raise DurationTooLong(f"must be at most {format_duration(MAX_DURATION_S)}")
    return value


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest exact form: 500ms, 90s, 15m, 2h, 1d (else plain seconds)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
