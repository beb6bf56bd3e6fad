"""Values the package hands to applications."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ._polybus import Receipt

__all__ = ["FailoverStatus", "MessageContext", "Receipt"]


@dataclass(frozen=True)
class FailoverStatus:
    """What a failover producer is doing."""

    #: ``primary`` (publishing to the broker), ``spooling`` (the broker is unreachable) or
    #: ``replaying`` (the spool is being sent to the broker, which is back).
    state: str
    #: Messages in the spool, not yet replayed.
    spool_depth: int
    #: Disk space the spool takes.
    spool_bytes: int
    #: Messages replayed to the primary since the broker was opened.
    replayed_total: int
    #: Messages spooled since the broker was opened.
    spooled_total: int
    #: The last error from the primary.
    last_error: Optional[str] = None


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
