"""Payload encoding: what ``send`` accepts and what a handler receives."""

from __future__ import annotations

import json
from typing import Any

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
BYTES = "application/octet-stream"


def encode(message: Any) -> tuple[bytes, str]:
    """Encodes a message for the wire: dicts, lists and numbers as JSON, pydantic models as
    their JSON, ``bytes`` as they are, ``str`` as UTF-8 text."""
    if type(message) is not dict:
        return _encode_other(message)
    return _json(message)


def _encode_other(message: Any) -> tuple[bytes, str]:
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message), BYTES
    if isinstance(message, str):
        return message.encode("utf-8"), TEXT
    dump = getattr(message, "model_dump_json", None)
    if callable(dump):
        return dump().encode("utf-8"), JSON
    return _json(message)


def _json(message: Any) -> tuple[bytes, str]:
    try:
        return _JSON_ENCODE(message).encode("utf-8"), JSON
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"cannot send a {type(message).__name__}: "
            f"pass a dict, list, pydantic model, bytes or str ({err})"
        ) from err


def _default(value: Any) -> Any:
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# One encoder for every message (``json.dumps`` with options builds a new one per call).
_JSON_ENCODE = json.JSONEncoder(separators=(",", ":"), default=_default).encode


def decode(payload: bytes, content_type: str) -> Any:
    """Decodes a received payload: JSON to Python values, text to ``str``, else ``bytes``."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == JSON or kind.endswith("+json"):
        return json.loads(payload)
    if kind.startswith("text/"):
        return payload.decode("utf-8", errors="replace")
    return payload
