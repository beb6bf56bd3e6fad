"""``Hub``: tasks to a queue broker, events to a stream broker, events replayed by time."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

from . import _polybus
from ._config import _option
from ._handlers import HANDLER_OPTIONS, handler_spec
from ._producer import Producer
from ._runner import HandlerRunner
from ._types import FailoverStatus, Receipt


class Hub:
    """Routes tasks (work queues: each task to one worker, e.g. RabbitMQ) and events (streams:
    every group gets every event, history can be replayed, e.g. Kafka) to their brokers.

    ``tasks_failover`` / ``events_failover`` put a broker behind a durable local spool
    (``{"spool_dir": ..., "fsync": "always"}``), as ``configure_messaging(failover=...)`` does.
    The same URL (and failover settings) for both gives one broker."""

    def __init__(
        self,
        tasks: str,
        events: str,
        *,
        tasks_failover: Optional[Mapping[str, Any]] = None,
        events_failover: Optional[Mapping[str, Any]] = None,
        group: str = "polybus",
    ) -> None:
        def pairs(options: Optional[Mapping[str, Any]]) -> Optional[dict[str, str]]:
            return {k: _option(v) for k, v in options.items()} if options else None

        self.tasks_broker, self.events_broker = _polybus.Broker.hub(
            tasks, events, pairs(tasks_failover), pairs(events_failover)
        )
        self._tasks = Producer(self.tasks_broker)
        self._events = Producer(self.events_broker)
        self._group = group
        self._runners: list[HandlerRunner] = []

    async def publish_task(
        self,
        topic: str,
        message: Any,
        *,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        message_id: Optional[str] = None,
    ) -> Receipt:
        """Publishes a task to the task broker."""
        return await self._tasks.send(
            topic, message, key=key, headers=headers, message_id=message_id
        )

    async def publish_event(
        self,
        topic: str,
        message: Any,
        *,
        key: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        message_id: Optional[str] = None,
    ) -> Receipt:
        """Publishes an event to the event broker."""
        return await self._events.send(
            topic, message, key=key, headers=headers, message_id=message_id
        )

    async def consume_tasks(
        self, topic: Union[str, Sequence[str]], handler: Callable[..., Any], **options: Any
    ) -> HandlerRunner:
        """Runs ``handler`` over tasks of ``topic`` (options as ``@message_handler``'s)."""
        return await self._start(self.tasks_broker, topic, handler, options)

    async def consume_events(
        self, topic: Union[str, Sequence[str]], handler: Callable[..., Any], **options: Any
    ) -> HandlerRunner:
        """Runs ``handler`` over events of ``topic`` (options as ``@message_handler``'s)."""
        return await self._start(self.events_broker, topic, handler, options)

    async def replay_events(
        self,
        topic: Union[str, Sequence[str]],
        since_ms: int,
        handler: Callable[..., Any],
        **options: Any,
    ) -> HandlerRunner:
        """Runs ``handler`` over events of ``topic`` from the first one at or after ``since_ms``
        (milliseconds since the epoch), in its own group unless ``group=`` says. Raises
        ``UnsupportedError`` where the event broker keeps no history (RabbitMQ, Redis lists)."""
        if since_ms < 0:
            raise ValueError(f"since_ms must be a time in milliseconds, got {since_ms!r}")
        options["start"] = f"timestamp:{int(since_ms)}"
        return await self._start(self.events_broker, topic, handler, options)

    def failover_status(self) -> dict[str, Optional[FailoverStatus]]:
        """The failover state of the task and the event broker (None where there is none)."""
        return {"tasks": self._tasks.failover_status(), "events": self._events.failover_status()}

    async def close(self) -> None:
        """Stops the runners this hub started, then flushes and closes both brokers."""
        for runner in self._runners:
            await runner.stop()
        self._runners.clear()
        await self.tasks_broker.close()
        if self.events_broker is not self.tasks_broker:
            await self.events_broker.close()

    async def __aenter__(self) -> Hub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(
        self,
        broker: _polybus.Broker,
        topic: Union[str, Sequence[str]],
        handler: Callable[..., Any],
        options: dict[str, Any],
    ) -> HandlerRunner:
        unknown = set(options) - HANDLER_OPTIONS
        if unknown:
            raise TypeError(f"unknown handler options: {', '.join(sorted(unknown))}")
        name = f"{handler.__module__}.{handler.__qualname__}"
        group = options.pop("group", None) or f"{self._group}.{name}"
        spec = handler_spec(handler, topic, group=group, **options)
        runner = HandlerRunner(spec, broker, group=group)
        await runner.start()
        self._runners.append(runner)
        return runner
