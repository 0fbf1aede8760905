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


def _fast_loads() -> Callable[[bytes], Any] | None:
    try:
        import orjson
    except ImportError:  # an install without it parses with json alone
        return None
    return orjson.loads


_orjson_loads = _fast_loads()


_DIGITS_AS_ZEROS = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_NUMBER = b"0" * 19  # 19 digits in a row: maybe an integer beyond 64 bits


def loads(content: bytes) -> Any:
    """A response body parsed as JSON: by orjson (faster, and its objects cost less to write
    out again), and by `json` whatever orjson refuses, so `json` stays the judge: what it
    accepts (a BOM, UTF-16, escaped lone surrogates, 1e400) parses as before, what it refuses
    (NaN, Infinity, a truncated body) fails with its own message. Both give the same values for
    what both accept (floats are correctly rounded by both), so content hashes do not change,
    except integers beyond 64 bits, which orjson reads as floats: a body with 19 digits in a row
    anywhere (one translate and one search) is left to `json`."""
    if _orjson_loads is not None and _LONG_NUMBER not in content.translate(_DIGITS_AS_ZEROS):
        try:
            return _orjson_loads(content)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            pass
    return json.loads(content, parse_constant=reject_constant)


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


def _canonical_encoders() -> tuple[Callable[[Any], str], Callable[[Any], str]]:
    """The item's JSON text with sorted keys: what is hashed, and what is stored as it is.

    The same text as `json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    .encode`, byte for byte, so content hashes stay those of earlier versions. orjson writes that
    text several times faster, except for floats below 1e-4 (orjson writes 0.0000x where json
    writes x.xe-05, and e-7 for e-07) and what it refuses (integers beyond 64 bits, lone
    surrogates): those take json's own encoder, as does every item without orjson.

    Returns (checked, trusted): `checked` looks for such a float in orjson's text (`_ORJSON_SMALL`,
    `_ORJSON_SHORT_EXPONENT`); `trusted` trusts orjson, for the items of a body that has no such
    number at all (`canonical_for`). Without orjson both are json's C encoder, made once (`encode`
    builds a new one per call: a third of the time per item)."""
    import re
    from json import encoder

    plain = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    stdlib = plain
    if encoder.c_make_encoder is not None:
        # markers (no circular check: parsed JSON has no cycles), default, string encoder, indent,
        # key separator, item separator, sort_keys, skipkeys, allow_nan (as the plain encoder)
        make = encoder.c_make_encoder(
            None, _not_json, encoder.encode_basestring, None, ":", ",", True, False, True
        )

        def stdlib(value: Any) -> str:
            if type(value) is str:  # a bare string item: what encode() does for it
                return plain(value)
            return "".join(make(value, 0))

    try:
        import orjson
    except ImportError:
        return stdlib, stdlib
    dumps, sort_keys, refused = orjson.dumps, orjson.OPT_SORT_KEYS, orjson.JSONEncodeError
    if any(dumps(probe) != json.dumps(probe).encode() for probe in _ORJSON_PROBES):
        return stdlib, stdlib  # an orjson older than 3.12 writes 1e16 where json writes 1e+16
    short_exponent = re.compile(_ORJSON_SHORT_EXPONENT).search

    def checked(value: Any) -> str:
        try:
            text = dumps(value, option=sort_keys)
        except refused:
            return stdlib(value)
        # Also found in a string now and then: that item just takes the slow road.
        if _ORJSON_SMALL in text or (b"e-" in text and short_exponent(text)):
            return stdlib(value)
        return text.decode()

    def trusted(value: Any) -> str:
        try:
            return dumps(value, option=sort_keys).decode()
        except refused:
            return stdlib(value)

    return checked, trusted


# Where orjson's number text can differ from json's (tests/test_poll_json.py checks the rest agrees):
# a float below 1e-4 (orjson 0.0000x, json x.xe-05) and an exponent of one digit (e-7, e-07).
_ORJSON_SMALL = b"0.0000"
_ORJSON_SHORT_EXPONENT = rb"e-[0-9](?![0-9])"
# Numbers orjson must write as json does for its text to be used at all.
_ORJSON_PROBES = (
    0.1,
    123.45,
    1e-4,
    1e15,
    1e16,
    1.2345678901234568e16,
    1e22,
    6.02214076e23,
    1.7976931348623157e308,
)

canonical, _trusted = _canonical_encoders()


def canonical_for(body: bytes) -> Callable[[Any], str]:
    """`canonical` for the items parsed from `body`, checked once for the whole body: a float
    below 1e-4 is written there with a negative exponent or as 0.0000..., so a body with neither
    (one search each, where searching every item's text costs a third of encoding it) has none."""
    if _ORJSON_SMALL in body or b"e-" in body or b"E-" in body:
        return canonical
    return _trusted


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
