"""Dead letters: count, inspect and redrive the messages a handler gave up on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from . import _polybus
from ._codec import decode
from ._config import get_broker


@dataclass(frozen=True)
class DeadLetter:
    """A message waiting in a dead-letter topic, with why it failed."""

    id: str
    topic: str
    key: Optional[str]
    headers: dict[str, str]
    payload: bytes
    content_type: str
    timestamp_ms: int
    error: Optional[str] = None
    error_type: Optional[str] = None
    attempts: Optional[int] = None
    original_topic: Optional[str] = None
    group: Optional[str] = None
    partition: Optional[int] = None
    offset: Optional[str] = None
    first_failure_ms: Optional[int] = None
    last_failure_ms: Optional[int] = None

    @property
    def body(self) -> Any:
        """The payload decoded by its content type, or the raw bytes when it does not decode
        (a dead letter is often a message that did not)."""
        try:
            return decode(self.payload, self.content_type)
        except ValueError:
            return self.payload


@dataclass(frozen=True)
class RedriveResult:
    """What a redrive did: how many dead letters were republished (and removed), and the ids
    of those left in place with why."""

    moved: int
    left: list[tuple[str, str]] = field(default_factory=list)


class DeadLetters:
    """Counts, lists and redrives the dead letters of a topic on ``broker`` (default: the
    configured one). Topics are dead-letter topics, e.g. ``"orders.created.dlq"``."""

    def __init__(self, broker: Optional[_polybus.Broker] = None) -> None:
        self._broker = broker

    @property
    def broker(self) -> _polybus.Broker:
        return self._broker or get_broker()

    async def count(self, topic: str) -> int:
        """How many dead letters wait in ``topic`` (not redriven yet)."""
        return int(await self.broker.dead_letter_count(topic))

    async def list(self, topic: str, limit: int = 10) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``topic``, left where they are."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        records = await self.broker.dead_letter_list(topic, limit)
        return [DeadLetter(**{**record, "headers": dict(record["headers"])}) for record in records]

    async def redrive(
        self, topic: str, *, limit: Optional[int] = None, to: Optional[str] = None
    ) -> RedriveResult:
        """Republishes dead letters of ``topic`` to the topic each failed on (or ``to``), with
        the same id and a fresh attempt count; each is removed from ``topic`` only once the
        broker acknowledged the republish. ``limit`` caps how many are taken."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        moved, left = await self.broker.dead_letter_redrive(topic, limit, to)
        return RedriveResult(moved=int(moved), left=list(left))
