"""Kafka from Python: Polybus against confluent-kafka, aiokafka and FastStream.

``kafka_bench.py produce|consume --impl IMPL ...`` (see ``_common`` for the other arguments).
Producers: ``polybus-batch`` (``send_batch`` per 1000), ``polybus-send`` (one ``send`` per
message, gathered 1000 at a time), ``confluent-kafka`` (``produce`` + ``poll(0)``, ``flush`` at
the end), ``aiokafka`` (``send`` futures gathered 1000 at a time), ``faststream`` (``publish``
gathered 1000 at a time); the async ones keep 4 chunks of 1000 in flight. Every producer has
Polybus' producer settings: idempotent, acks=all, linger 1 ms. Consumers (a trivial handler
decoding the JSON): ``polybus`` (``KafkaConsumer`` with an async handler), ``confluent-kafka``
(a sync ``poll`` loop in a thread), ``aiokafka`` (``getmany`` and an async handler per
message), ``faststream`` (an async subscriber). The topic is created with 4 partitions by the
harness before the run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any, Optional
from urllib.parse import urlsplit

import _common as c
from _driver import Consumer, PolybusConsumer, PolybusProducer, Producer, main

PRODUCER_SETTINGS = {"enable.idempotence": True, "linger.ms": 1}


def bootstrap(url: str) -> str:
    return urlsplit(url).netloc


# --------------------------------------------------------------------------------------------
# Producers


class ConfluentProducer(Producer):
    async def open(self) -> None:
        from confluent_kafka import Producer as CProducer

        self.producer = CProducer(
            {"bootstrap.servers": bootstrap(self.args.url), **PRODUCER_SETTINGS}
        )

    def _produce(self, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.args.topic, value)
                return
            except BufferError:
                self.producer.poll(0.01)

    async def produce(self, count: int) -> None:
        body = c.message(self.args.size)
        for i in range(count):
            self._produce(c.encode(body))
            if i % 1000 == 999:
                self.producer.poll(0)
        if self.producer.flush(60) != 0:
            raise RuntimeError("confluent-kafka: messages left after flush")

    def send(self, body: dict[str, Any]) -> None:
        self._produce(c.encode(body))
        self.producer.poll(0)

    async def flush(self) -> None:
        self.producer.flush(60)


class AiokafkaProducer(Producer):
    async def open(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap(self.args.url),
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
        )
        await self.producer.start()

    async def produce(self, count: int) -> None:
        body = c.message(self.args.size)
        topic = self.args.topic

        async def chunk(n: int) -> None:
            futures = [await self.producer.send(topic, c.encode(body)) for _ in range(n)]
            await asyncio.gather(*futures)

        await c.in_flight(count, chunk)

    def send(self, body: dict[str, Any]) -> None:
        async def one() -> None:
            await (await self.producer.send(self.args.topic, c.encode(body)))

        self.pending.append(asyncio.ensure_future(one()))

    async def close(self) -> None:
        await self.producer.stop()


class FaststreamProducer(Producer):
    async def open(self) -> None:
        from faststream.kafka import KafkaBroker

        self.broker = KafkaBroker(
            bootstrap(self.args.url), acks="all", enable_idempotence=True, linger_ms=1, logger=None
        )
        await self.broker.start()

    async def produce(self, count: int) -> None:
        body = c.message(self.args.size)
        topic = self.args.topic
        await c.in_flight(
            count, lambda n: asyncio.gather(*(self.broker.publish(body, topic) for _ in range(n)))
        )

    def send(self, body: dict[str, Any]) -> None:
        self.pending.append(asyncio.ensure_future(self.broker.publish(body, self.args.topic)))

    async def close(self) -> None:
        await self.broker.stop()


def producer(args: c.Args) -> Producer:
    impl = args.impl
    if impl in ("polybus", "polybus-batch"):
        return PolybusProducer(args, batch=True)
    if impl == "polybus-send":
        return PolybusProducer(args, batch=False)
    if impl == "confluent-kafka":
        return ConfluentProducer(args)
    if impl == "aiokafka":
        return AiokafkaProducer(args)
    if impl == "faststream":
        return FaststreamProducer(args)
    raise SystemExit(f"unknown implementation {impl!r}")


# --------------------------------------------------------------------------------------------
# Consumers


class ConfluentConsumer(Consumer):
    """The classic sync poll loop, in a thread of its own."""

    async def start(self) -> None:
        from confluent_kafka import Consumer as CConsumer

        self.running = True
        self.assigned = threading.Event()
        self.consumer = CConsumer(
            {
                "bootstrap.servers": bootstrap(self.args.url),
                "group.id": self.group,
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.subscribe([self.args.topic], on_assign=lambda *_: self.assigned.set())
        self.error: Optional[str] = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        await c.await_until(self.assigned.is_set, 60, "partition assignment")

    def _loop(self) -> None:
        consumer, tally = self.consumer, self.tally
        while self.running:
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            if msg.error():
                self.error = str(msg.error())
                continue
            tally.seen(json.loads(msg.value() or b"{}"))
        consumer.close()

    async def stop(self) -> None:
        self.running = False
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join)


class AiokafkaConsumer(Consumer):
    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            self.args.topic,
            bootstrap_servers=bootstrap(self.args.url),
            group_id=self.group,
            auto_offset_reset="earliest",
        )
        await self.consumer.start()
        await c.await_until(lambda: bool(self.consumer.assignment()), 60, "partition assignment")
        self.running = True
        self.task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        tally = self.tally

        async def handle(value: bytes) -> None:
            tally.seen(json.loads(value))

        while self.running:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=500)
            for records in batches.values():
                for record in records:
                    await handle(record.value)

    async def stop(self) -> None:
        self.running = False
        await self.task
        await self.consumer.stop()


class FaststreamConsumer(Consumer):
    async def start(self) -> None:
        from faststream.kafka import KafkaBroker

        tally = self.tally
        self.broker = KafkaBroker(bootstrap(self.args.url), logger=None)

        @self.broker.subscriber(self.args.topic, group_id=self.group, auto_offset_reset="earliest")
        async def handle(body: dict[str, Any]) -> None:
            tally.seen(body)

        await self.broker.start()
        consumers = [getattr(s, "consumer", None) for s in self.broker.subscribers]
        consumer = next((x for x in consumers if x is not None), None)
        if consumer is not None and hasattr(consumer, "assignment"):
            await c.await_until(lambda: bool(consumer.assignment()), 60, "partition assignment")
        else:
            await asyncio.sleep(5)

    async def stop(self) -> None:
        await self.broker.stop()


def consumer(args: c.Args, tally: c.Tally) -> Consumer:
    impl = args.impl
    if impl == "polybus":
        return PolybusConsumer(args, tally)
    if impl == "confluent-kafka":
        return ConfluentConsumer(args, tally)
    if impl == "aiokafka":
        return AiokafkaConsumer(args, tally)
    if impl == "faststream":
        return FaststreamConsumer(args, tally)
    raise SystemExit(f"unknown implementation {impl!r}")


if __name__ == "__main__":
    main(sys.argv[1:], producer, consumer)
