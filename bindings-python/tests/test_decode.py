"""The engine decodes received JSON payloads exactly as ``json.loads`` does, or leaves them to
Python."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from polybus import _polybus
from polybus._codec import decode

JSON = "application/json"

TRICKY = [
    b"{}",
    b"[]",
    b'  {"a" : [1, 2.5, -3, true, false, null]}\n',
    b'{"a": 1, "a": 2}',
    b'"just a string"',
    b"0",
    b"-0",
    b"[-0, -0.0, -0e1, -0E1, -01]",
    b'{"a":-0}',
    b"-0.0",
    b"1e400",
    b"-1e400",
    b"4.9e-324",
    b"2.2250738585072011e-308",
    b"0.1",
    b"0.30000000000000004",
    b"1.7976931348623157e308",
    b"123456789012345678",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"123456789012345678901234567890",
    b"[1.0, 1E2, 1e-2, -1.5E+3]",
    b'"\\u00e9\\ud83c\\udf89 \\n\\t\\\\ \\" \\/"',
    '"é 日本 🎉"'.encode(),
    b'"\\ud800"',
    b"NaN",
    b"[Infinity, -Infinity]",
    b'{"a": 1} trailing',
    b"\xef\xbb\xbf{}",
    b"",
    b"{",
    b"\xff",
    b"[" * 200 + b"]" * 200,
    b'{"nested": {"list": [1, [2, [3, {"deep": []}]]]}}',
]


def _python(payload: bytes) -> tuple[str, Any]:
    try:
        return "value", decode(payload, JSON)
    except ValueError as err:
        return "error", type(err)


def _engine(payload: bytes, content_type: str = JSON) -> tuple[str, Any]:
    body = _polybus._decode_body(payload, content_type)
    if body is _polybus.NOT_DECODED:
        return _python(payload)
    return "value", body


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 and 1.0 differ; -0.0 and 0.0 differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("payload", TRICKY, ids=lambda p: repr(p[:30]))
def test_tricky_documents_decode_as_json_loads_does(payload: bytes) -> None:
    kind, value = _engine(payload)
    expected_kind, expected = _python(payload)
    assert kind == expected_kind
    assert _same(value, expected), (value, expected)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 4 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.randint(-(2**70), 2**70) if rng.random() < 0.2 else rng.randint(-1000, 10**12)
    if pick == 3:
        return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-300, 300)
    if pick in (4, 5):
        return "".join(_random_char(rng) for _ in range(rng.randint(0, 12)))
    if pick in (6, 7):
        return {
            str(rng.randint(0, 50)): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))
        }
    return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]


def _random_char(rng: random.Random) -> str:
    """Any character but a surrogate: ASCII (controls and quotes too), BMP or astral."""
    code = rng.choice(
        [rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]
    )
    return chr(code)


def test_random_documents_decode_as_json_loads_does() -> None:
    rng = random.Random(9)
    for _ in range(3000):
        value = _random_value(rng)
        ascii_only = rng.random() < 0.5
        payload = json.dumps(value, ensure_ascii=ascii_only).encode()
        kind, decoded = _engine(payload)
        assert kind == "value"
        assert _same(decoded, json.loads(payload)), payload


@pytest.mark.parametrize(
    ("content_type", "decoded"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/vnd.orders+json", True),
        ("text/plain; charset=utf-8", False),
        ("application/octet-stream", False),
        ("application/jsonx", False),
        ("x/é+json", True),
        ("xéjson", False),
        ("é", False),
    ],
)
def test_only_json_content_types_are_decoded_by_the_engine(
    content_type: str, decoded: bool
) -> None:
    body = _polybus._decode_body(b'{"a": 1}', content_type)
    assert (body is not _polybus.NOT_DECODED) is decoded
    if decoded:
        assert body == {"a": 1}
