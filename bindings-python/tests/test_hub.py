"""``Hub``: tasks to RabbitMQ, events to Kafka, events replayed from a point in time."""

from __future__ import annotations

import asyncio
import time
import uuid

import polybus
import pytest
from conftest import BROKERS
from polybus import Hub, MessageContext


async def _until(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_tasks_go_to_the_queue_broker_and_events_replay_from_a_time() -> None:
    suffix = uuid.uuid4().hex[:8]
    tasks_topic, events_topic = f"pytest.hub.task.{suffix}", f"pytest.hub.event.{suffix}"

    async def main() -> None:
        async with Hub(BROKERS["rabbitmq"], BROKERS["kafka"], group=f"hub-{suffix}") as hub:
            assert hub.tasks_broker.name == "rabbitmq" and hub.events_broker.name == "kafka"
            done: list[dict] = []

            async def work(message: dict) -> None:
                done.append(message)

            runner = await hub.consume_tasks(tasks_topic, work)
            await runner.wait_ready()
            await hub.publish_task(tasks_topic, {"task": 1})
            await _until(lambda: done == [{"task": 1}], "the task")

            await hub.publish_event(events_topic, {"event": "early"})
            await asyncio.sleep(0.05)
            since = int(time.time() * 1000)
            await asyncio.sleep(0.05)
            await hub.publish_event(events_topic, {"event": "late-1"})
            await hub.publish_event(events_topic, {"event": "late-2"})

            replayed: list[tuple[str, str]] = []

            async def audit(message: dict, context: MessageContext) -> None:
                replayed.append((message["event"], context.topic))

            replay = await hub.replay_events(events_topic, since, audit)
            await replay.wait_ready()
            await _until(lambda: len(replayed) >= 2, "the replay")
            await asyncio.sleep(0.5)
            assert sorted(e for e, _ in replayed) == ["late-1", "late-2"]
            assert hub.failover_status() == {"tasks": None, "events": None}

    asyncio.run(main())


def test_replaying_from_a_broker_without_history_is_a_clear_error() -> None:
    async def main() -> None:
        async with Hub(BROKERS["kafka"], BROKERS["rabbitmq"]) as hub:

            async def audit(message: dict) -> None:
                raise AssertionError("nothing is replayed")

            with pytest.raises(polybus.UnsupportedError, match="rabbitmq"):
                await hub.replay_events("pytest.hub.none", 0, audit)

    asyncio.run(main())


def test_one_url_gives_one_broker() -> None:
    async def main() -> None:
        async with Hub("memory://hub-one", "memory://hub-one") as hub:
            assert hub.tasks_broker.url == hub.events_broker.url == "memory://hub-one"
            with pytest.raises(TypeError, match="unknown handler options: colour"):

                async def noop(message: dict) -> None:
                    pass

                await hub.consume_tasks("t", noop, colour="blue")

    asyncio.run(main())
