"""Values the package hands to applications."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Receipt:
    """What the broker reported for a published message."""

    id: str
    partition: Optional[int] = None
    offset: Optional[int] = None
    stream_id: Optional[str] = None
    receivers: Optional[int] = None


@dataclass(frozen=True)
class MessageContext:
    """Everything about a received message besides its decoded body. Ask for it in a handler
    with a parameter named ``context`` (or annotated ``MessageContext``)."""

    id: str
    topic: str
    key: Optional[str]
    headers: dict[str, str]
    payload: bytes
    content_type: str
    timestamp_ms: int
    attempt: int
    partition: Optional[int] = None
    offset: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)
