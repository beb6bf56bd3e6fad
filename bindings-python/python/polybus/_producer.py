"""The producer: ``await get_producer().send(topic, message)``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, cast

from . import _polybus
from ._polybus import Sending
from ._types import FailoverStatus, Receipt


async def _send_when_awaited(
    producer: _polybus.ProducerBase,
    topic: str,
    message: Any,
    key: Optional[str],
    headers: Optional[Mapping[str, str]],
    message_id: Optional[str],
) -> Receipt:
    # What ``send`` returns when called outside a running loop (the engine calls it).
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "send() must be awaited inside a running asyncio loop; "
            "from blocking code use send_sync()"
        ) from None
    # (The base's own ``send``: a subclass's override already ran when ``send`` was called.)
    sending = _polybus.ProducerBase.send(
        producer, topic, message, key=key, headers=headers, message_id=message_id
    )
    return await cast(Sending, sending)


class Producer(_polybus.ProducerBase):
    """Publishes messages. Use it from asyncio (``send``, ``send_batch``) or from blocking
    code (``send_sync``); as an async context manager it flushes and closes on exit.

    ``send(topic, message, *, key=None, headers=None, message_id=None)`` comes from the native
    base class (no Python frame per message): see ``ProducerBase.send``. So does ``broker``,
    the native broker connection it was made with (``Producer(broker)``)."""

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
        return await self.broker.publish_batch(
            topic,
            messages,
            list(keys) if keys is not None else None,
            headers,
        )

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
        # The engine encodes the message and checks the headers, as for ``send``.
        return self.broker.publish_blocking((topic, message, key, headers, message_id))

    def failover_status(self) -> Optional[FailoverStatus]:
        """Where publishes go (``primary``, ``spooling`` or ``replaying``) and how full the spool
        is, when the broker was configured with ``failover=``; None otherwise."""
        raw = self.broker.failover_status()
        return FailoverStatus(**raw) if raw is not None else None

    async def flush(self, timeout: float = 30.0) -> None:
        """Waits until everything published so far was accepted."""
        await self.broker.flush(timeout)

    async def close(self) -> None:
        """Flushes and closes the connection."""
        await self.broker.close()

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush()
