"""Strict JSON for every value we store or print: one encoding on SQLite and PostgreSQL.

PostgreSQL's `json` refuses NaN and infinities (Python's `json` writes them as bare `NaN`, which no
strict parser reads), and neither knows NumPy, Decimal, dates or bytes. `jsonable()` turns a value
into plain JSON types by these rules, and `dumps()` writes it strictly:

* NaN, inf and -inf become the strings "NaN", "Infinity" and "-Infinity" (what `float()` reads back
  and PostgreSQL's `::float8` cast accepts), wherever they are nested;
* NumPy scalars and arrays become numbers and (nested) lists; Decimal its exact string ("1.10");
  datetime, date and time their ISO 8601 string; timedelta its seconds; an Enum its value;
* bytes are UTF-8 text (undecodable bytes as \\xNN); sets sorted lists; tuples lists; mapping keys
  strings; in text, NUL and lone surrogates (an undecodable file name) become \\xNN (see `text`);
* anything else its `str()`; a structure that contains itself its `repr()`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps` that never writes NaN or an unknown type (see the module's rules)."""
    return json.dumps(jsonable(value), allow_nan=False, **options)


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types (dict, list, str, int, float, bool, None) by the module's rules."""
    try:
        return _convert(value, set())
    except (ValueError, RecursionError):
        return repr(value)


def _convert(value: Any, parents: set[int]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return text(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return _convert(value.tolist(), parents)  # a NumPy scalar or array: Python numbers and lists
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if id(value) in parents:
            raise ValueError("a structure that contains itself")
        parents.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {_key(k): _convert(v, parents) for k, v in value.items()}
            items = [_convert(item, parents) for item in value]
            return _sorted(items) if isinstance(value, (set, frozenset)) else items
        finally:
            parents.discard(id(value))
    return _other(value, parents)


def _other(value: Any, parents: set[int]) -> Any:
    import datetime
    import decimal
    import enum

    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return _float(value.total_seconds())
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return _convert(value.value, parents)
    return text(str(value))


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return float(value)
    return "NaN" if math.isnan(value) else NON_FINITE[value]


def text(value: str) -> str:
    """`value` as any database column and terminal can hold: NUL and lone surrogates (what
    os.fsdecode() makes of non-UTF-8 bytes) written as \\xNN."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _key(key: Any) -> str:
    if isinstance(key, str):
        return text(key)
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    converted = _convert(key, set())
    return converted if isinstance(converted, str) else json.dumps(converted)


def _sorted(items: list[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:  # mixed types: keep a stable order all the same
        return sorted(items, key=lambda item: (type(item).__name__, json.dumps(item, sort_keys=True)))
