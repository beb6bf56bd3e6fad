"""The Python API end to end, on every broker: send, handle, retry, dead-letter, inject."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Optional

import polybus
import pytest
from conftest import run_handlers
from polybus import (
    HandlerRunner,
    MessageContext,
    get_producer,
    message_handler,
    provide,
    registered_handlers,
)
from pydantic import BaseModel


class OrderCreated(BaseModel):
    order_id: int
    user_id: int


def test_dict_round_trip_with_key_headers_and_context(broker_url: str, topic: str) -> None:
    seen: list[tuple[dict, MessageContext]] = []

    @message_handler(topic=topic)
    async def handle(message: dict, context: MessageContext) -> None:
        seen.append((message, context))

    async def send() -> None:
        receipt = await get_producer().send(
            topic, {"order_id": 1, "user_id": 2}, key="user-2", headers={"tenant": "eu"}
        )
        assert receipt.id

    asyncio.run(run_handlers(topic, send, until=lambda: seen))
    message, context = seen[0]
    assert message == {"order_id": 1, "user_id": 2}
    assert (context.topic, context.key, context.headers.get("tenant"), context.attempt) == (
        topic,
        "user-2",
        "eu",
        1,
    )
    assert context.content_type == "application/json"


def test_pydantic_models_are_sent_and_validated(broker_url: str, topic: str) -> None:
    seen: list[OrderCreated] = []

    @message_handler(topic=topic, schema=OrderCreated)
    async def handle(message: OrderCreated) -> None:
        seen.append(message)

    async def send() -> None:
        await get_producer().send(topic, OrderCreated(order_id=7, user_id=8))

    asyncio.run(run_handlers(topic, send, until=lambda: seen))
    assert seen == [OrderCreated(order_id=7, user_id=8)]


def test_one_handler_reads_several_topics_and_sync_handlers_run_in_threads(
    broker_url: str, topic: str
) -> None:
    other = f"{topic}.updated"
    seen: list[str] = []

    @message_handler(topic=[topic, other])
    def handle(message: dict, context: MessageContext) -> None:
        time.sleep(0.01)  # blocking work does not block the event loop
        seen.append(context.topic)

    async def send() -> None:
        await get_producer().send(topic, {"n": 1})
        await get_producer().send(other, {"n": 2})

    asyncio.run(run_handlers(topic, send, until=lambda: len(seen) == 2))
    assert sorted(seen) == sorted([topic, other])


def test_concurrent_sends_of_one_key_arrive_in_order_and_handlers_keep_it(
    broker_url: str, topic: str
) -> None:
    seen: list[int] = []

    @message_handler(topic=topic, concurrency=5)
    async def handle(message: dict) -> None:
        await asyncio.sleep(0)  # other jobs run meanwhile; this key's must wait
        seen.append(message["n"])

    async def send() -> None:
        # Sent in one loop tick: they reach the engine as one batch, in this order.
        producer = get_producer()
        receipts = await asyncio.gather(
            *(producer.send(topic, {"n": n}, key="k") for n in range(300))
        )
        assert len({r.id for r in receipts}) == 300

    asyncio.run(run_handlers(topic, send, until=lambda: len(seen) >= 300))
    assert sorted(seen) == list(range(300))
    if get_producer().broker.capabilities["ordering_per_key"]:
        assert seen == list(range(300))


def test_handlers_never_run_more_than_concurrency_at_once(broker_url: str, topic: str) -> None:
    running = 0
    most = 0
    done: list[int] = []

    @message_handler(topic=topic, concurrency=3, prefetch=50)
    async def handle(message: dict) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.005)
        running -= 1
        done.append(message["n"])

    async def send() -> None:
        # A key each: nothing orders them, so three can run at once on every broker.
        messages = [{"n": n} for n in range(60)]
        await get_producer().send_batch(topic, messages, keys=[f"k{n}" for n in range(60)])

    asyncio.run(run_handlers(topic, send, until=lambda: len(done) >= 60))
    assert sorted(done) == list(range(60))
    assert most == 3, f"{most} handlers ran at once with concurrency=3"


def test_a_handler_that_waits_does_not_hold_up_the_messages_behind_it(
    broker_url: str, topic: str
) -> None:
    # The first message's handler waits until every other one was handled: another worker
    # must take the messages that arrived with it while it waits.
    others_done = asyncio.Event()
    done: list[int] = []

    @message_handler(topic=topic, concurrency=2, prefetch=50)
    async def handle(message: dict) -> None:
        if message["n"] == 0:
            await asyncio.wait_for(others_done.wait(), 20)
        done.append(message["n"])
        if len(done) == 39:
            others_done.set()

    async def send() -> None:
        messages = [{"n": n} for n in range(40)]
        await get_producer().send_batch(topic, messages, keys=[f"k{n}" for n in range(40)])

    asyncio.run(run_handlers(topic, send, until=lambda: len(done) >= 40))
    assert sorted(done) == list(range(40))
    assert done[-1] == 0


def test_without_a_prefetch_a_consumer_holds_the_brokers_default(
    broker_url: str, topic: str
) -> None:
    # Handlers that never finish: the consumer takes messages until it holds its prefetch.
    release = asyncio.Event()

    @message_handler(topic=topic)
    async def handle(message: dict) -> None:
        await release.wait()

    async def main() -> int:
        runner = HandlerRunner(registered_handlers([topic])[0])
        await runner.start()
        await runner.wait_ready()
        try:
            messages = [{"n": n} for n in range(700)]
            await get_producer().send_batch(topic, messages, keys=[f"k{n}" for n in range(700)])
            # The count only grows, up to the prefetch: wait until it stays put for a second.
            deadline = time.monotonic() + 30
            held, since = -1, time.monotonic()
            while time.monotonic() - since < 1.0:
                received = runner.stats().get("received", 0)
                if received != held:
                    held, since = received, time.monotonic()
                assert time.monotonic() < deadline, f"still taking messages: {runner.stats()}"
                await asyncio.sleep(0.05)
            return held
        finally:
            release.set()
            await runner.stop()

    expected = 500 if broker_url.startswith("kafka") else 100
    assert asyncio.run(main()) == expected


def test_concurrency_one_handles_each_queue_in_order(broker_url: str, topic: str) -> None:
    seen: dict[Optional[int], list[int]] = {}

    @message_handler(topic=topic, concurrency=1)
    async def handle(message: dict, context: MessageContext) -> None:
        await asyncio.sleep(0)
        seen.setdefault(context.partition, []).append(message["n"])

    async def send() -> None:
        await get_producer().send_batch(topic, [{"n": n} for n in range(100)])

    asyncio.run(run_handlers(topic, send, until=lambda: sum(map(len, seen.values())) >= 100))
    assert sorted(n for queue in seen.values() for n in queue) == list(range(100))
    for queue in seen.values():  # (a Kafka topic's partitions are queues of their own)
        assert queue == sorted(queue)


def test_send_is_a_future_a_task_and_a_coroutine(topic: str) -> None:
    polybus.configure_messaging(url="memory://pytest-sending")
    producer = get_producer()
    # Before any loop runs, send() is a coroutine for asyncio.run.
    first = asyncio.run(producer.send(topic, {"n": 0}))
    assert isinstance(first, polybus.Receipt) and first.offset == 0

    async def inside() -> list[polybus.Receipt]:
        sending = producer.send(topic, {"n": 1})
        assert asyncio.isfuture(sending)
        one = await sending
        assert sending.done() and sending.result() == one
        two = await asyncio.create_task(producer.send(topic, {"n": 2}))
        three = await asyncio.wait_for(producer.send(topic, {"n": 3}), 5)
        return [one, two, three]

    receipts = asyncio.run(inside())
    assert [r.offset for r in receipts] == [1, 2, 3]
    again = polybus.Receipt(receipts[0].id, partition=0, offset=1)
    assert again == receipts[0] and hash(again) == hash(receipts[0])
    assert repr(again).startswith("Receipt(id=")


def test_send_outside_a_running_loop_names_the_alternatives(topic: str) -> None:
    polybus.configure_messaging(url="memory://pytest-sending")
    sending = get_producer().send(topic, {"n": 1})
    with pytest.raises(RuntimeError, match="send_sync"):
        # Awaited by hand, not by a loop: the coroutine cannot find a running loop.
        sending.send(None)
    sending.close()


def test_send_batch_and_send_sync(broker_url: str, topic: str) -> None:
    seen: list[int] = []

    @message_handler(topic=topic, concurrency=4)
    async def handle(message: dict) -> None:
        seen.append(message["n"])

    async def send() -> None:
        receipts = await get_producer().send_batch(topic, [{"n": n} for n in range(50)])
        assert len(receipts) == 50 and len({r.id for r in receipts}) == 50
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: get_producer().send_sync(topic, {"n": 50})
        )

    asyncio.run(run_handlers(topic, send, until=lambda: len(seen) == 51))
    assert sorted(seen) == list(range(51))


def test_exceptions_retry_with_their_delays_then_dead_letter(broker_url: str, topic: str) -> None:
    calls: list[float] = []
    dead: list[tuple[dict, MessageContext]] = []

    @message_handler(topic=topic, max_retries=2, retry_delay=0.3, retry_backoff=2.0, jitter=0)
    async def flaky(message: dict) -> None:
        calls.append(time.monotonic())
        raise RuntimeError("payment gateway down")

    @message_handler(topic=f"{topic}.dlq")
    async def inspect(message: dict, context: MessageContext) -> None:
        dead.append((message, context))

    async def main() -> None:
        runners = [HandlerRunner(s) for s in registered_handlers([topic, f"{topic}.dlq"])]
        for r in runners:
            await r.start()
        for r in runners:
            await r.wait_ready()
        await get_producer().send(topic, {"order_id": 3})
        deadline = time.monotonic() + 30
        while not dead:
            assert time.monotonic() < deadline, f"no dead letter; calls={len(calls)}"
            await asyncio.sleep(0.02)
        for r in runners:
            await r.stop()

    asyncio.run(main())
    assert len(calls) == 3, "one attempt and two retries"
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    # 0.3 s, then 0.6 s (backoff 2): never early, and not much later than asked.
    for gap, delay in zip(gaps, [0.3, 0.6], strict=True):
        assert delay - 0.02 <= gap <= delay + 1.5, f"retry gaps {gaps}, expected 0.3 and 0.6"
    message, context = dead[0]
    assert message == {"order_id": 3}
    assert context.headers["polybus-dlq-error"] == "payment gateway down"
    assert context.headers["polybus-dlq-error-type"] == "RuntimeError"
    assert context.headers["polybus-dlq-attempts"] == "3"


def test_an_invalid_payload_is_dead_lettered_and_the_consumer_goes_on(
    broker_url: str, topic: str
) -> None:
    good: list[OrderCreated] = []
    dead: list[MessageContext] = []

    @message_handler(topic=topic, schema=OrderCreated, max_retries=5)
    async def handle(message: OrderCreated) -> None:
        good.append(message)

    @message_handler(topic=f"{topic}.dlq")
    async def inspect(message: Any, context: MessageContext) -> None:
        dead.append(context)

    async def main() -> None:
        runners = [HandlerRunner(s) for s in registered_handlers([topic, f"{topic}.dlq"])]
        for r in runners:
            await r.start()
        for r in runners:
            await r.wait_ready()
        producer = get_producer()
        await producer.send(topic, {"order_id": "not a number"})
        await producer.send(topic, b"\x00 not json", headers={"x": "1"})
        await producer.send(topic, {"order_id": 5, "user_id": 6})
        deadline = time.monotonic() + 30
        while len(dead) < 2 or not good:
            assert time.monotonic() < deadline, f"dead={len(dead)} good={len(good)}"
            await asyncio.sleep(0.02)
        for r in runners:
            await r.stop()

    asyncio.run(main())
    assert good == [OrderCreated(order_id=5, user_id=6)]
    reasons = sorted(c.headers["polybus-dlq-error-type"] for c in dead)
    assert reasons == ["ValidationError", "ValidationError"]
    assert all(c.headers["polybus-dlq-attempts"] == "1" for c in dead), "no retries for bad input"


def test_dependencies_are_injected_by_name(broker_url: str, topic: str) -> None:
    events: list[str] = []
    provide("settings", {"currency": "EUR"})
    provide("clock", lambda: "now")

    async def session() -> AsyncIterator[str]:
        events.append("open")
        yield "db-session"
        events.append("close")

    provide("db", session)
    seen: list[tuple[Any, ...]] = []

    @message_handler(topic=topic)
    async def handle(message: dict, db: str, settings: dict, clock: str) -> None:
        seen.append((db, settings["currency"], clock))

    async def send() -> None:
        await get_producer().send(topic, {"n": 1})

    asyncio.run(run_handlers(topic, send, until=lambda: seen and events[-1:] == ["close"]))
    assert seen == [("db-session", "EUR", "now")]
    assert events == ["open", "close"], "one session per message, closed after it"


def test_a_missing_dependency_is_a_clear_error(topic: str) -> None:
    polybus.configure_messaging(url="memory://pytest-missing")

    @message_handler(topic=topic)
    async def handle(message: dict, db: Any) -> None: ...

    with pytest.raises(TypeError, match="needs db"):
        HandlerRunner(registered_handlers([topic])[0])


def test_bad_configuration_names_the_bad_part() -> None:
    polybus.configure_messaging(url="mqtt://somewhere")
    with pytest.raises(polybus.ConfigurationError, match="scheme"):
        polybus.get_producer()
    polybus.configure_messaging(broker="kafak")
    with pytest.raises(polybus.ConfigurationError, match="kafak"):
        polybus.get_producer()
    polybus.configure_messaging(url="redis://127.0.0.1:6379/0", mode="sideways")
    with pytest.raises(polybus.ConfigurationError, match="mode"):
        polybus.get_producer()


def test_an_unreachable_broker_is_a_connection_error_without_the_password() -> None:
    polybus.configure_messaging(url="amqp://app:s3cr3t@127.0.0.1:1/", connection_timeout=2000)
    with pytest.raises(polybus.BrokerConnectionError) as caught:
        asyncio.run(get_producer().send("t", {"a": 1}))
    assert "s3cr3t" not in str(caught.value)


def test_unsupported_message_types_are_refused(topic: str) -> None:
    polybus.configure_messaging(url="memory://pytest-types")
    with pytest.raises(TypeError, match="cannot send a object"):
        asyncio.run(get_producer().send(topic, object()))


def test_every_kind_of_payload_arrives_as_python_would_encode_it(topic: str) -> None:
    polybus.configure_messaging(url="memory://pytest-payloads")
    stamp = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    sent: list[Any] = [
        {"text": 'quote " backslash \\ tab \t nul \x00 é 日本 🎉', "n": -7, "big": 2**64 + 1},
        {"f": 0.1, "g": 1e16, "h": -2.5e-8, "t": True, "f2": False, "none": None},
        {"nested": {"list": [1, [2, [3, {"deep": ()}]]], "tuple": (1, "a")}},
        {1: "int key", None: "none key"},  # only Python coerces these keys
        {"when": stamp},  # and encodes datetimes
        [1, 2, 3],
        "plain text",
        b"\x00\xffraw",
        OrderCreated(order_id=1, user_id=2),
    ]
    seen: list[tuple[Any, str]] = []

    @message_handler(topic=topic, concurrency=1)
    async def handle(message: Any, context: MessageContext) -> None:
        seen.append((message, context.content_type))

    async def send() -> None:
        producer = get_producer()
        for value in sent[:4]:
            await producer.send(topic, value)
        await producer.send_batch(topic, sent[4:])

    asyncio.run(run_handlers(topic, send, until=lambda: len(seen) == len(sent)))
    expected = [json.loads(json.dumps(v, default=str)) for v in sent[:6]]
    expected[4] = {"when": stamp.isoformat()}
    assert [m for m, _ in seen[:6]] == expected
    assert seen[6] == ("plain text", "text/plain; charset=utf-8")
    assert seen[7] == (b"\x00\xffraw", "application/octet-stream")
    assert seen[8] == ({"order_id": 1, "user_id": 2}, "application/json")


def test_a_handler_of_the_message_alone_gets_every_kind_of_payload_too(topic: str) -> None:
    # Such a handler's jobs carry the body alone, and the payload only when Python decodes it:
    # integers past 64 bits, text, raw bytes.
    polybus.configure_messaging(url="memory://pytest-body-only")
    sent: list[Any] = [{"big": 2**64 + 1, "n": -0.0}, {"f": 0.1}, "plain text", b"\x00\xffraw"]
    seen: list[Any] = []

    @message_handler(topic=topic, concurrency=1)
    async def handle(message: Any) -> None:
        seen.append(message)

    async def send() -> None:
        await get_producer().send_batch(topic, sent)

    asyncio.run(run_handlers(topic, send, until=lambda: len(seen) == len(sent)))
    assert seen == [{"big": 2**64 + 1, "n": -0.0}, {"f": 0.1}, "plain text", b"\x00\xffraw"]
    assert type(seen[0]["big"]) is int


def test_values_json_cannot_hold_are_refused_before_anything_is_sent(topic: str) -> None:
    polybus.configure_messaging(url="memory://pytest-types")
    with pytest.raises(TypeError, match="cannot send a dict"):
        asyncio.run(get_producer().send(topic, {"cycle": {1, 2}}))
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(TypeError, match="cannot send a list"):
        asyncio.run(get_producer().send_batch(topic, [{"ok": 1}, looped]))


def test_a_forked_child_gets_a_working_runtime_of_its_own(topic: str) -> None:
    polybus.configure_messaging(url="memory://pytest-fork")
    asyncio.run(get_producer().send(topic, {"from": "parent"}))  # the parent's runtime exists now
    seen: list[dict] = []

    @message_handler(topic=topic)
    async def handle(message: dict) -> None:
        seen.append(message)

    pid = os.fork()
    if pid == 0:  # the child: its own runtime, its own connection
        code = 1
        try:
            asyncio.run(
                run_handlers(
                    topic,
                    lambda: get_producer().send(topic, {"from": "child"}),
                    until=lambda: len(seen) == 2,
                )
            )
            code = 0 if {"from": "child"} in seen else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: {status}"


@pytest.mark.parametrize("kind", ["kafka", "rabbitmq", "redis"])
def test_manual_consumers_of_each_broker(kind: str, topic: str) -> None:
    from polybus.kafka import KafkaConsumer
    from polybus.rabbitmq import RabbitMQConsumer
    from polybus.redis import RedisConsumer

    consumer_class, url = {
        "kafka": (KafkaConsumer, "kafka://127.0.0.1:9092"),
        "rabbitmq": (RabbitMQConsumer, "amqp://guest:guest@127.0.0.1:5672/"),
        "redis": (RedisConsumer, "redis://127.0.0.1:6379/0"),
    }[kind]
    seen: list[dict] = []

    async def process_message(message: dict) -> None:
        seen.append(message)

    async def main() -> None:
        consumer = consumer_class(
            group_id=f"{topic}.manual", topics=[topic], message_handler=process_message, url=url
        )
        await consumer.start()
        await consumer.wait_ready()
        polybus.configure_messaging(url=url)
        await get_producer().send(topic, {"order_id": 9})
        deadline = time.monotonic() + 30
        while not seen:
            assert time.monotonic() < deadline, "the manual consumer got nothing"
            await asyncio.sleep(0.02)
        stats = await consumer.stop()
        assert stats["succeeded"] == 1

    asyncio.run(main())
    assert seen == [{"order_id": 9}]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_dedup_handles_a_message_id_once(broker_url: str, topic: str, store: str) -> None:
    redis_url = os.environ.get("POLYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    handled: list[dict] = []

    @message_handler(topic=topic, dedup=True if store == "memory" else redis_url)
    async def handle(message: dict) -> None:
        handled.append(message)

    async def main() -> None:
        runner = HandlerRunner(registered_handlers([topic])[0])
        await runner.start()
        await runner.wait_ready()
        try:
            producer = get_producer()
            message_id = f"dedup-{uuid.uuid4()}"
            await producer.send(topic, {"n": 1}, message_id=message_id)
            await producer.send(topic, {"n": 1}, message_id=message_id)
            await producer.send(topic, {"n": 2})
            deadline = time.monotonic() + 30
            while len(handled) < 2 or runner.stats().get("duplicates", 0) < 1:
                assert time.monotonic() < deadline, f"timed out: {runner.stats()}"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
        finally:
            stats = await runner.stop()
        assert sorted(m["n"] for m in handled) == [1, 2]
        assert stats["duplicates"] == 1 and stats["succeeded"] == 2, stats

    asyncio.run(main())


def test_dedup_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="dedup must be"):
        message_handler(topic="t", dedup="memcached://x")
    with pytest.raises(ValueError, match="dedup_ttl"):
        message_handler(topic="t", dedup=True, dedup_ttl=0)
