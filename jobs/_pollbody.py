"""Reading an API's JSON for `poll_api`: dotted paths, the canonical text that is hashed and
stored, and comparing and moving `updated_field` values (the watermark)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

ERROR_BODY_CHARS = 120  # of an error page, quoted in the failure


def dig(value: Any, path: str) -> Any:
    """`value` at the dotted `path` ('' is the value itself); KeyError naming the missing part."""
    for part in path.split(".") if path else ():
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def field_getter(path: str) -> Callable[[Any], Any] | None:
    """A function reading the dotted `path` of an item (None for an empty path). A plain key, the
    common case, is read without `dig`'s loop: this runs for every item of every page."""
    if not path:
        return None
    if "." not in path:
        return lambda item: item[path] if type(item) is dict else dig(item, path)
    return lambda item: dig(item, path)


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _canonical_encoder() -> Callable[[Any], str]:
    """The item's JSON text with sorted keys: what is hashed, and what is stored as it is.

    The same text as `json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    .encode`, from one C encoder made once (`encode` builds a new one per call: a third of the
    time per item). Without the C accelerator, that plain `encode`."""
    from json import encoder

    plain = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    if encoder.c_make_encoder is None:
        return plain
    # markers (no circular check: parsed JSON has no cycles), default, string encoder, indent,
    # key separator, item separator, sort_keys, skipkeys, allow_nan (as the plain encoder)
    make = encoder.c_make_encoder(
        None, _not_json, encoder.encode_basestring, None, ":", ",", True, False, True
    )

    def canonical(value: Any) -> str:
        if type(value) is str:  # a bare string item: what encode() does for it
            return plain(value)
        return "".join(make(value, 0))

    return canonical


canonical = _canonical_encoder()


def order_key(value: Any) -> tuple[int, float | str]:
    """How updated_field values compare: numbers and ISO 8601 times (naive = UTC) as instants."""
    kind = type(value)
    if kind is str:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                return (1, value)
        return (0, (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
    if kind is int or kind is float:
        return (0, float(value))
    raise TypeError(kind.__name__)


def earlier(value: Any, seconds: float) -> Any:
    """`value` (the watermark) moved `seconds` back, written the way the API wrote it."""
    if seconds <= 0:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value - seconds if isinstance(value, float) else value - int(seconds + 0.999999)
    try:
        moment = datetime.fromisoformat(value.strip())
    except (AttributeError, ValueError):
        return value  # not a time: sent as it is
    text = value.strip()
    moved = moment - timedelta(seconds=seconds)
    shown = moved.isoformat(sep=text[10] if len(text) > 10 else "T", timespec=_timespec(text))
    return shown[:-6] + "Z" if text.endswith(("Z", "z")) and shown.endswith("+00:00") else shown


def _timespec(text: str) -> str:
    clock = text[11:].split("+")[0].split("Z")[0].split("-")[0]
    if "." not in clock:
        return "seconds" if clock.count(":") == 2 else "minutes"
    digits = len(clock.split(".")[1])
    return "milliseconds" if digits <= 3 else "microseconds"


def snippet(content: bytes) -> str:
    text = content[: ERROR_BODY_CHARS * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return (
        repr(text[:ERROR_BODY_CHARS] + ("…" if len(text) > ERROR_BODY_CHARS else ""))
        if text
        else "(empty body)"
    )
