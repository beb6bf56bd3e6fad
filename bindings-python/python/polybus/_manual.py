"""Consumers built by hand: ``KafkaConsumer(group_id=..., topics=[...], message_handler=...)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

from . import _polybus
from ._config import _option
from ._handlers import handler_spec
from ._runner import HandlerRunner


class ManualConsumer:
    """Consumes ``topics`` in ``group_id`` with ``message_handler`` on one broker, with the same
    retries, dead letters and graceful stop as ``@message_handler``."""

    broker_kind: str = "memory"

    def __init__(
        self,
        group_id: str,
        topics: Sequence[str],
        message_handler: Callable[..., Any],
        *,
        url: Optional[str] = None,
        bootstrap_servers: Optional[str] = None,
        concurrency: int = 10,
        prefetch: Optional[int] = None,
        max_retries: int = 0,
        retry_delay: float = 1.0,
        retry_backoff: float = 2.0,
        schema: Optional[type] = None,
        dead_letter: Optional[str] = None,
        start: str = "earliest",
        dedup: Union[bool, str, None] = None,
        dedup_ttl: float = 86400.0,
        **options: Any,
    ) -> None:
        self._connect = dict(
            url=url,
            broker=None if url else self.broker_kind,
            bootstrap_servers=bootstrap_servers,
            options={k: _option(v) for k, v in options.items()},
        )
        self._spec = handler_spec(
            message_handler,
            tuple(topics),
            group=group_id,
            max_retries=max_retries,
            retry_delay=retry_delay,
            retry_backoff=retry_backoff,
            schema=schema,
            concurrency=concurrency,
            prefetch=prefetch,
            dead_letter=dead_letter,
            start=start,
            dedup=dedup,
            dedup_ttl=dedup_ttl,
        )
        self._runner: Optional[HandlerRunner] = None

    async def start(self) -> None:
        """Connects, subscribes and starts handling messages in the background."""
        broker = _polybus.Broker.connect(**self._connect)
        self._runner = HandlerRunner(self._spec, broker, group=self._spec.group)
        await self._runner.start()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until the subscription receives (for Kafka: partitions assigned)."""
        if self._runner is not None:
            await self._runner.wait_ready(timeout)

    async def stop(self) -> dict[str, int]:
        """Stops fetching, drains in-flight messages and returns the counters."""
        return await self._runner.stop() if self._runner is not None else {}

    def stats(self) -> dict[str, int]:
        """Current counters."""
        return self._runner.stats() if self._runner is not None else {}
