"""RabbitMQ from Python: Polybus against aio-pika and FastStream, confirmed and persistent.

``rabbitmq_bench.py produce|consume --impl IMPL ...`` (see ``_common`` for the other
arguments). Every implementation publishes the same AMQP message with publisher confirms:
persistent JSON to the durable topic exchange ``polybus`` with the topic as routing key,
``mandatory``, a message id, a timestamp and the headers ``polybus-timestamp`` (milliseconds)
and ``polybus-topic``, as Polybus does. The exchange routes to the durable queue
``<topic>.g``, consumed with manual acknowledgements after the handler.
Producers: ``polybus-batch``, ``polybus-send`` (see ``_driver.PolybusProducer``), ``aio-pika``
(``Exchange.publish`` on a channel with publisher confirms, gathered 1000 at a time),
``faststream`` (``RabbitBroker.publish(persist=True)``, gathered 1000 at a time); each keeps 4
chunks of 1000 in flight.
Consumers: ``polybus`` (``RabbitMQConsumer``, prefetch 100), ``aio-pika`` (``queue.consume``
with ``message.process()``, prefetch 100), ``faststream`` (an async subscriber, its defaults).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import _common as c
from _driver import Consumer, PolybusConsumer, PolybusProducer, Producer, main

PREFETCH = 100

EXCHANGE = "polybus"
"""The exchange Polybus publishes to by default (durable, topic)."""


def headers(topic: str) -> dict[str, Any]:
    """The headers Polybus sends beside the payload."""
    return {"polybus-timestamp": int(time.time() * 1000), "polybus-topic": topic}


def amqp_url(url: str) -> str:
    return url.split("?", 1)[0]


class AioPikaProducer(Producer):
    async def open(self) -> None:
        import aio_pika

        self.aio_pika = aio_pika
        self.connection = await aio_pika.connect_robust(amqp_url(self.args.url))
        self.channel = await self.connection.channel(publisher_confirms=True)
        topic = self.args.topic
        self.exchange = await self.channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await self.channel.declare_queue(f"{topic}.g", durable=True)
        await queue.bind(self.exchange, routing_key=topic)

    def _publish(self, body: dict[str, Any]) -> Any:
        topic = self.args.topic
        message = self.aio_pika.Message(
            c.encode(body),
            content_type="application/json",
            delivery_mode=self.aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(uuid.uuid4()),
            timestamp=int(time.time()),
            app_id="polybus",
            headers=headers(topic),
        )
        return self.exchange.publish(message, routing_key=topic, mandatory=True)

    async def produce(self, count: int) -> None:
        body = c.message(self.args.size)
        await c.in_flight(count, lambda n: asyncio.gather(*(self._publish(body) for _ in range(n))))

    def send(self, body: dict[str, Any]) -> None:
        self.pending.append(asyncio.ensure_future(self._publish(body)))

    async def close(self) -> None:
        await self.connection.close()


class FaststreamProducer(Producer):
    async def open(self) -> None:
        from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

        self.broker = RabbitBroker(amqp_url(self.args.url), logger=None)
        await self.broker.start()
        topic = self.args.topic
        self.exchange = RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True)
        exchange = await self.broker.declare_exchange(self.exchange)
        queue = await self.broker.declare_queue(RabbitQueue(f"{topic}.g", durable=True))
        await queue.bind(exchange, routing_key=topic)

    def _publish(self, body: dict[str, Any]) -> Any:
        # FastStream sets a message id (a UUID) itself; mandatory is its default.
        topic = self.args.topic
        return self.broker.publish(
            body,
            exchange=self.exchange,
            routing_key=topic,
            persist=True,
            timestamp=int(time.time()),
            headers=headers(topic),
        )

    async def produce(self, count: int) -> None:
        body = c.message(self.args.size)
        await c.in_flight(count, lambda n: asyncio.gather(*(self._publish(body) for _ in range(n))))

    def send(self, body: dict[str, Any]) -> None:
        self.pending.append(asyncio.ensure_future(self._publish(body)))

    async def close(self) -> None:
        await self.broker.stop()


def producer(args: c.Args) -> Producer:
    impl = args.impl
    if impl in ("polybus", "polybus-batch"):
        return PolybusProducer(args, batch=True, declare_group=True)
    if impl == "polybus-send":
        return PolybusProducer(args, batch=False, declare_group=True)
    if impl == "aio-pika":
        return AioPikaProducer(args)
    if impl == "faststream":
        return FaststreamProducer(args)
    raise SystemExit(f"unknown implementation {impl!r}")


class AioPikaConsumer(Consumer):
    async def start(self) -> None:
        import aio_pika

        tally = self.tally
        self.connection = await aio_pika.connect_robust(amqp_url(self.args.url))
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        self.queue = await channel.declare_queue(self.group, durable=True)

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                tally.seen(json.loads(message.body))

        self.tag = await self.queue.consume(handle)

    async def stop(self) -> None:
        await self.queue.cancel(self.tag)
        await self.connection.close()


class FaststreamConsumer(Consumer):
    async def start(self) -> None:
        from faststream.rabbit import RabbitBroker, RabbitQueue

        tally = self.tally
        self.broker = RabbitBroker(amqp_url(self.args.url), logger=None)

        @self.broker.subscriber(RabbitQueue(self.group, durable=True))
        async def handle(body: dict[str, Any]) -> None:
            tally.seen(body)

        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()


def consumer(args: c.Args, tally: c.Tally) -> Consumer:
    impl = args.impl
    if impl == "polybus":
        return PolybusConsumer(args, tally)
    if impl == "aio-pika":
        return AioPikaConsumer(args, tally)
    if impl == "faststream":
        return FaststreamConsumer(args, tally)
    raise SystemExit(f"unknown implementation {impl!r}")


if __name__ == "__main__":
    main(sys.argv[1:], producer, consumer)
