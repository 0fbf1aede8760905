"""poll_api's JSON: bodies parsed by orjson with `json` as the judge, and the canonical text (what
is hashed and stored) byte for byte what `json` writes, so an item's content hash is the same as
with earlier versions, with or without orjson, whatever numbers and strings it holds."""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import pytest

from jobs._pollbody import canonical, canonical_for, loads

STDLIB = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode

# Values where orjson's own text differs from json's, or that it refuses, and their neighbours.
TRICKY_FLOATS = [
    1e-4,
    9.999e-5,
    1e-5,
    7.532257813800045e-05,
    1.5e-7,
    1e-9,
    1e-10,
    5e-324,
    2.2250738585072014e-308,
    0.1,
    0.0001,
    123.45,
    100.0,
    -0.0,
    0.0,
    1e15,
    1e16,
    1.2345678901234568e16,
    1e21,
    1e22,
    1.7976931348623157e308,
    -3.25e-6,
    6.02214076e23,
]
TRICKY_INTS = [0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**30]
TRICKY_STRINGS = [
    "",
    "e-5",
    "0.0000",
    "x\u2028y\u2029",
    "\x00\x01\x1f\x7f",
    'q"\\/',
    "\n\t\r\b\f",
    "é😀\uffff",
]


def items() -> list[Any]:
    found: list[Any] = [
        {"total": f, "id": n} for f, n in zip(TRICKY_FLOATS, range(len(TRICKY_FLOATS)), strict=True)
    ]
    found += [{"n": n} for n in TRICKY_INTS]
    found += [{s: s, "k": [s]} for s in TRICKY_STRINGS]
    found += [
        {"b": 1, "a": {"z": [1.5e-7, {"y": None, "x": True}], "é": 1, "B": 2, "😀": 3, "\uffff": 4}},
        "a bare string item",
        [],
        {},
        {"lone": json.loads('"\\ud800"')},  # an escaped lone surrogate: json accepts it
    ]
    return found


@pytest.mark.parametrize("item", items(), ids=repr)
def test_canonical_text_is_what_json_writes(item: Any) -> None:
    body = json.dumps([item]).encode("utf-8", "surrogatepass")
    assert canonical(item) == STDLIB(item)
    assert canonical_for(body)(item) == STDLIB(item)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        exponent = rng.choice([rng.randrange(-330, 308), rng.randrange(-12, 20)])
        return float(f"{rng.choice(['1', '1.5', '7.25', '-3.14159', '9.999999999999999'])}e{exponent}")
    if kind == 1:
        bits = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        return bits if bits == bits and abs(bits) != float("inf") else 0.5
    if kind == 2:
        return rng.randrange(-(2**70), 2**70) if rng.random() < 0.2 else round(rng.uniform(0, 1000), 2)
    if kind == 3:
        return "".join(rng.choice('aBé😀\u2028\x00\x1f"\\/\ne-50.0000E+') for _ in range(rng.randrange(6)))
    if kind == 4:
        return rng.choice([True, False, None, 0, -7])
    if kind in (5, 6):
        return {_random_value(rng, 9): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]


def test_random_items_hash_as_json_writes_them() -> None:
    rng = random.Random(20261202)
    for _ in range(3000):
        page = [_random_value(rng) for _ in range(5)]
        page = [{str(k): v for k, v in p.items()} if isinstance(p, dict) else p for p in page]
        body = json.dumps(page).encode()
        parsed = loads(body)
        assert parsed == json.loads(body)
        encode = canonical_for(body)
        for item in parsed:
            assert encode(item) == STDLIB(item), item


@pytest.mark.parametrize(
    "body",
    [
        b'{"big": 123456789012345678901234567890, "x": 1.5e-7}',  # beyond 64 bits: json parses it
        b'\xef\xbb\xbf{"bom": true}',  # a UTF-8 BOM
        '{"wide": "\u00e9"}'.encode("utf-16"),  # UTF-16, as json detects it
        b'{"lone": "\\ud800"}',
        b'[{"id": 1, "total": 12.5}]',
        b'{"a": 1, "a": 2, "huge": 1e400, "tiny": 1e-400}',  # the last key wins; json reads inf
        b'{"id": "12345678901234567890123", "n": 18446744073709551615}',  # digits in a string
    ],
)
def test_bodies_parse_as_json_parses_them(body: bytes) -> None:
    assert loads(body) == json.loads(body)


@pytest.mark.parametrize("body", [b'{"total": NaN}', b'{"x": Infinity}', b'{"items": [1, 2', b"<html>"])
def test_bodies_json_refuses_fail_with_its_message(body: bytes) -> None:
    with pytest.raises(ValueError) as ours:
        loads(body)
    try:
        json.loads(body, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(f"{name} is not JSON")))
    except ValueError as theirs:
        assert str(ours.value) == str(theirs)
