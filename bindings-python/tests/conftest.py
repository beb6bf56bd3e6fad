"""Shared fixtures: one parameter per broker, each a real server that `make test` starts."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import polybus
import pytest
from polybus import HandlerRunner, registered_handlers

BROKERS = {
    "memory": "memory://pytest",
    "kafka": os.environ.get(
        "POLYBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092?polybus.topic.partitions=2"
    ),
    "rabbitmq": os.environ.get("POLYBUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    "redis-list": os.environ.get("POLYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    + "?mode=list",
    "redis-streams": os.environ.get("POLYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    + "?mode=streams",
}


@pytest.fixture(params=list(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    """Every test using it runs once per broker."""
    url = BROKERS[request.param]
    polybus.configure_messaging(url=url, group=f"pytest-{uuid.uuid4().hex[:8]}")
    return url


T = TypeVar("T")


@dataclass(frozen=True)
class EventLoops:
    """One kind of event loop: asyncio's own, or uvloop's (which many services run on)."""

    name: str
    new_loop: Callable[[], asyncio.AbstractEventLoop]

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Runs `main` to completion on a fresh loop of this kind, as `asyncio.run` does."""
        if self.name == "uvloop":
            import uvloop

            return uvloop.run(main)
        return asyncio.run(main)


def _uvloop_new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


@pytest.fixture(params=["asyncio", "uvloop"])
def loops(request: pytest.FixtureRequest) -> EventLoops:
    """Every test using it runs once on asyncio's loop and once on uvloop's."""
    if request.param == "uvloop":
        return EventLoops("uvloop", _uvloop_new_loop)
    return EventLoops("asyncio", asyncio.new_event_loop)


@pytest.fixture
def topic() -> str:
    return f"pytest.{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _fresh_registry() -> None:
    polybus.clear_handlers()
    polybus.clear_providers()


async def run_handlers(
    topic: str, body: Any, *, until: Any, timeout: float = 30.0
) -> list[HandlerRunner]:
    """Starts the handlers registered for `topic`, runs `body`, waits until `until()` holds."""
    runners = [HandlerRunner(spec) for spec in registered_handlers([topic])]
    for runner in runners:
        await runner.start()
    for runner in runners:
        await runner.wait_ready()
    try:
        await body()
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "timed out waiting for the handlers"
            await asyncio.sleep(0.02)
    finally:
        for runner in runners:
            await runner.stop()
    return runners
