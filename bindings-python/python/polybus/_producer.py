"""The producer: ``await get_producer().send(topic, message)``."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator, Iterable, Mapping, Sequence
from typing import Any, Optional, cast

from . import _polybus
from ._types import FailoverStatus, Receipt


def _outgoing(
    topic: str,
    message: Any,
    key: Optional[str],
    headers: Optional[Mapping[str, str]],
    message_id: Optional[str],
) -> _polybus.Outgoing:
    # The engine encodes the message (bytes, str, JSON; other types through ``_codec.encode``).
    return (topic, message, key, dict(headers) if headers else None, message_id)


class Sending(asyncio.Future[Receipt], Coroutine[Any, Any, Receipt]):
    """A publish under way: an ``asyncio.Future`` of its :class:`Receipt` that also works as a
    coroutine, so ``await``, ``asyncio.gather``, ``asyncio.wait_for`` and
    ``asyncio.create_task`` all accept it (``gather`` without creating a task per message)."""

    _steps: Optional[Generator[Any, None, Receipt]] = None

    def send(self, value: None) -> Any:
        """Coroutine protocol: advances the wait for the receipt."""
        if self._steps is None:
            self._steps = self.__await__()
        return self._steps.send(value)

    def throw(self, *args: Any) -> Any:  # type: ignore[override]
        """Coroutine protocol: raises inside the wait for the receipt."""
        if self._steps is None:
            self._steps = self.__await__()
        return self._steps.throw(*args)

    def close(self) -> None:
        """Coroutine protocol: abandons the wait (the publish itself carries on)."""
        if self._steps is not None:
            self._steps.close()


class Producer:
    """Publishes messages. Use it from asyncio (``send``, ``send_batch``) or from blocking
    code (``send_sync``); as an async context manager it flushes and closes on exit."""

    def __init__(self, broker: _polybus.Broker) -> None:
        self._broker = broker

    @property
    def broker(self) -> _polybus.Broker:
        """The native broker connection."""
        return self._broker

    def send(
        self,
        topic: str,
        message: Any,
        *,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        message_id: Optional[str] = None,
    ) -> Sending:
        """Publishes one message; await the result for the broker's receipt.

        Inside a running loop the publish is under way when ``send`` returns (as with
        confluent-kafka's ``produce``), and invalid messages raise at once. Called before a loop
        runs (``asyncio.run(producer.send(...))``) it returns a coroutine that publishes when
        awaited. From blocking code use ``send_sync``."""
        outgoing = _outgoing(topic, message, key, headers, message_id)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return cast(Sending, self._send_when_awaited(outgoing))
        sending = Sending(loop=loop)
        self._broker.publish(outgoing, sending)
        return sending

    async def _send_when_awaited(self, outgoing: _polybus.Outgoing) -> Receipt:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "send() must be awaited inside a running asyncio loop; "
                "from blocking code use send_sync()"
            ) from None
        sending = Sending(loop=loop)
        self._broker.publish(outgoing, sending)
        return await sending

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
        return await self._broker.publish_batch(
            topic,
            messages,
            list(keys) if keys is not None else None,
            dict(headers) if headers else None,
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
        return self._broker.publish_blocking(_outgoing(topic, message, key, headers, message_id))

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
