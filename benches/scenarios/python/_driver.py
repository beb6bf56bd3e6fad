"""Runs a Python scenario: the produce measurement, or the three phases of a consume one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import _common as c

ProducerFactory = Callable[[c.Args], "Producer"]
ConsumerFactory = Callable[[c.Args, c.Tally], "Consumer"]


class Producer:
    """One implementation's producer. ``produce`` publishes ``count`` messages as fast as the
    implementation goes and returns when the broker accepted them all; ``send`` publishes one
    latency message without waiting (what it returns to wait on goes to ``pending``)."""

    def __init__(self, args: c.Args) -> None:
        self.args = args
        self.pending: list[Any] = []

    async def open(self) -> None:
        """Connects (untimed)."""

    async def produce(self, count: int) -> None:
        raise NotImplementedError

    def send(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending)
            self.pending.clear()

    async def close(self) -> None:
        """Disconnects (untimed)."""

    async def paced(self) -> None:
        """The paced messages (warm-up, then ``--latency-messages``) at ``--latency-rate`` per
        second, each carrying the time it was handed to the client."""
        start = time.perf_counter()
        for offset, phase in c.pace_schedule(self.args):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send(c.message(self.args.size, phase, time.time()))
        await self.flush()


class PolybusProducer(Producer):
    """``send_batch`` per 1000 messages, or one ``send`` per message gathered 1000 at a time
    (``asyncio.gather``); 4 chunks in flight. With ``declare_group`` (RabbitMQ) the consumer
    group's queue is declared first (a consumer started and stopped), so published messages
    are routed."""

    def __init__(self, args: c.Args, batch: bool, declare_group: bool = False) -> None:
        super().__init__(args)
        self.batch = batch
        self.declare_group = declare_group

    async def open(self) -> None:
        import polybus

        polybus.configure_messaging(url=self.args.url)
        self.producer = polybus.get_producer()
        if self.declare_group and self.args.role == "main":
            # (In a consume scenario the consumer has declared it already.)
            consumer = PolybusConsumer(self.args, c.Tally())
            await consumer.start()
            await consumer.stop()

    async def produce(self, count: int) -> None:
        body = c.message(self.args.size)
        topic = self.args.topic
        if self.batch:
            await c.in_flight(count, lambda n: self.producer.send_batch(topic, [body] * n))
        else:
            await c.in_flight(
                count,
                lambda n: asyncio.gather(*(self.producer.send(topic, body) for _ in range(n))),
            )
        await self.producer.flush()

    def send(self, body: dict[str, Any]) -> None:
        self.pending.append(asyncio.ensure_future(self.producer.send(self.args.topic, body)))

    async def close(self) -> None:
        await self.producer.flush()


class Consumer:
    """One implementation's consumer; its handler calls ``tally.seen(decoded_json)``.
    ``start`` returns once it receives (for Kafka: partitions assigned)."""

    def __init__(self, args: c.Args, tally: c.Tally) -> None:
        self.args = args
        self.tally = tally
        self.group = f"{args.topic}.g"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class PolybusConsumer(Consumer):
    """A manual consumer (``polybus.kafka.KafkaConsumer`` and its siblings, the
    ``@message_handler`` runtime) with an async handler, default concurrency and prefetch."""

    async def start(self) -> None:
        from polybus._manual import ManualConsumer

        tally = self.tally

        async def handle(message: dict[str, Any]) -> None:
            tally.seen(message)

        self.consumer = ManualConsumer(
            group_id=self.group, topics=[self.args.topic], message_handler=handle, url=self.args.url
        )
        await self.consumer.start()
        await self.consumer.wait_ready(60)

    async def stop(self) -> None:
        await self.consumer.stop()


async def produce(args: c.Args, make_producer: ProducerFactory) -> None:
    producer = make_producer(args)
    await producer.open()
    # One small untimed message first: connections, metadata and topology are ready before
    # the clock starts, for every implementation alike.
    await producer.produce(1)
    timer = c.Timer()
    timer.start()
    await producer.produce(args.messages)
    result = timer.result(args.messages)
    await producer.close()
    result.extra["warmup_messages"] = 1
    result.emit()


async def helper(args: c.Args, make_producer: ProducerFactory) -> None:
    """The pacer (latency messages) or the filler (the backlog to drain)."""
    producer = make_producer(args)
    await producer.open()
    if args.role == "pacer":
        await producer.paced()
    else:
        await producer.produce(args.messages)
    await producer.close()


async def consume(
    args: c.Args, make_consumer: ConsumerFactory, prepare: Callable[[c.Args], Any] | None
) -> None:
    tally = c.Tally()
    if prepare is not None:
        await prepare(args)
    # 1. An idle consumer.
    consumer = make_consumer(args, tally)
    await consumer.start()
    await asyncio.sleep(args.idle_seconds)
    idle_rss = c.rss_mib()
    # 2. End-to-end latency of paced messages.
    pacer = c.Helper(args, "pacer")
    await c.await_until(
        lambda: len(tally.latencies_ms) >= args.latency_messages or pacer.done(),
        args.timeout,
        "the paced messages",
    )
    pacer.check()
    await c.await_until(
        lambda: len(tally.latencies_ms) >= args.latency_messages, 30, "the paced messages"
    )
    await consumer.stop()
    # 3. Drain a backlog with a new consumer in the same group.
    filler = c.Helper(args, "fill")
    await c.await_until(filler.done, args.timeout, "the filler")
    filler.check()
    await c.broker_quiet()
    c.reset_peak_rss()
    cpu = c.cpu_seconds()
    started = time.perf_counter()
    consumer = make_consumer(args, tally)
    await consumer.start()
    # The clock runs from the moment the consumer is ready (subscribed; for Kafka, partitions
    # assigned), or from its first message if that came earlier, to its last message.
    ready = time.perf_counter()
    await c.await_until(lambda: tally.drained >= args.messages, args.timeout, "the backlog")
    cpu = c.cpu_seconds() - cpu
    peak = c.peak_rss_mib()
    await consumer.stop()
    begin = min(ready, tally.first) if tally.drained else ready
    seconds = tally.last - begin
    c.Result(
        messages=tally.drained,
        seconds=seconds,
        cpu_s=cpu,
        peak_rss_mib=peak,
        latencies_ms=tally.latencies_ms,
        idle_rss_mib=idle_rss,
        extra={"startup_s": round(ready - started, 3)},
    ).emit()


def main(
    argv: Sequence[str],
    make_producer: ProducerFactory,
    make_consumer: ConsumerFactory,
    prepare: Callable[[c.Args], Any] | None = None,
) -> None:
    """``SCRIPT produce|consume [options]``."""
    if not argv or argv[0] not in ("produce", "consume"):
        raise SystemExit("usage: SCRIPT produce|consume --impl IMPL [options]")
    mode, args = argv[0], c.parse_args(argv[1:])
    if args.role != "main":
        asyncio.run(helper(args, make_producer))
    elif mode == "produce":
        asyncio.run(produce(args, make_producer))
    else:
        asyncio.run(consume(args, make_consumer, prepare))
