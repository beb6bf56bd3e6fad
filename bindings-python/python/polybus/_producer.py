"""The producer: ``await get_producer().send(topic, message)``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from . import _polybus
from ._codec import encode
from ._types import FailoverStatus, Receipt


def _outgoing(
    topic: str,
    message: Any,
    key: Optional[str],
    headers: Optional[Mapping[str, str]],
    message_id: Optional[str],
) -> tuple[str, bytes, str, Optional[str], Optional[dict[str, str]], Optional[str]]:
    payload, content_type = encode(message)
    return (topic, payload, content_type, key, dict(headers) if headers else None, message_id)


def _receipt(raw: _polybus.ReceiptTuple) -> Receipt:
    return Receipt(*raw)


class Producer:
    """Publishes messages. Use it from asyncio (``send``, ``send_batch``) or from blocking
    code (``send_sync``); as an async context manager it flushes and closes on exit."""

    def __init__(self, broker: _polybus.Broker) -> None:
        self._broker = broker

    @property
    def broker(self) -> _polybus.Broker:
        """The native broker connection."""
        return self._broker

    async def send(
        self,
        topic: str,
        message: Any,
        *,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        message_id: Optional[str] = None,
    ) -> Receipt:
        """Publishes one message and waits until the broker accepted it."""
        raw = await self._broker.publish(_outgoing(topic, message, key, headers, message_id))
        return _receipt(raw)

    async def send_batch(
        self,
        topic: str,
        messages: Iterable[Any],
        *,
        keys: Optional[Sequence[Optional[str]]] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> list[Receipt]:
        """Publishes many messages to ``topic`` in one pipelined call. Raises the first error
        after every message was tried; the others were published."""
        items = list(messages)
        if keys is not None and len(keys) != len(items):
            raise ValueError(f"{len(keys)} keys for {len(items)} messages")
        batch = [
            _outgoing(topic, m, keys[i] if keys is not None else None, headers, None)
            for i, m in enumerate(items)
        ]
        results = await self._broker.publish_batch(batch)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return [_receipt(r) for r in results]

    def send_sync(
        self,
        topic: str,
        message: Any,
        *,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        message_id: Optional[str] = None,
    ) -> Receipt:
        """Publishes one message from blocking code (the GIL is released while waiting)."""
        return _receipt(
            self._broker.publish_blocking(_outgoing(topic, message, key, headers, message_id))
        )

    def failover_status(self) -> Optional[FailoverStatus]:
        """Where publishes go (``primary``, ``spooling`` or ``replaying``) and how full the spool
        is, when the broker was configured with ``failover=``; None otherwise."""
        raw = self._broker.failover_status()
        return FailoverStatus(**raw) if raw is not None else None

    async def flush(self, timeout: float = 30.0) -> None:
        """Waits until everything published so far was accepted."""
        await self._broker.flush(timeout)

    async def close(self) -> None:
        """Flushes and closes the connection."""
        await self._broker.close()

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush()
