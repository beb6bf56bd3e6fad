"""Redis lists and streams from Python: Polybus against redis-py (asyncio, with hiredis).

``redis_bench.py produce|consume --impl IMPL --url redis://HOST:PORT/0?mode=list|streams ...``
(see ``_common`` for the other arguments). Producers: ``polybus-batch``, ``polybus-send`` (see
``_driver.PolybusProducer``), ``redis-py`` (one ``LPUSH``/``XADD`` awaited per message),
``redis-py-pipeline`` (a non-transactional pipeline per 1000 messages). Consumers: ``polybus``
(``RedisConsumer``: for lists a reliable ``BLMOVE`` into a processing list, removed after the
handler; for streams ``XREADGROUP`` and ``XACK``), ``redis-py`` (the same at-least-once pattern
written by hand: ``BLMOVE`` + ``LREM`` per message for lists, ``XREADGROUP COUNT 100`` + one
``XACK`` per batch for streams), ``redis-py-brpop`` (lists: a plain ``BRPOP`` loop, at most
once).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import _common as c
from _driver import Consumer, PolybusConsumer, PolybusProducer, Producer, main


def mode(url: str) -> str:
    return parse_qs(urlsplit(url).query).get("mode", ["list"])[0]


def client(url: str) -> Any:
    import redis.asyncio as aioredis

    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return aioredis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db)


class RedisPyProducer(Producer):
    def __init__(self, args: c.Args, pipeline: bool) -> None:
        super().__init__(args)
        self.pipeline = pipeline
        self.streams = mode(args.url) == "streams"

    async def open(self) -> None:
        self.redis = client(self.args.url)
        await self.redis.ping()

    def _command(self, target: Any, data: bytes) -> Any:
        if self.streams:
            return target.xadd(self.args.topic, {"data": data})
        return target.lpush(self.args.topic, data)

    async def produce(self, count: int) -> None:
        body = c.message(self.args.size)
        if not self.pipeline:
            for _ in range(count):
                await self._command(self.redis, c.encode(body))
            return
        for n in c.chunks(count):
            pipe = self.redis.pipeline(transaction=False)
            for _ in range(n):
                self._command(pipe, c.encode(body))
            await pipe.execute()

    def send(self, body: dict[str, Any]) -> None:
        self.pending.append(asyncio.ensure_future(self._command(self.redis, c.encode(body))))

    async def close(self) -> None:
        await self.redis.aclose()


def producer(args: c.Args) -> Producer:
    impl = args.impl
    if impl in ("polybus", "polybus-batch"):
        return PolybusProducer(args, batch=True)
    if impl == "polybus-send":
        return PolybusProducer(args, batch=False)
    if impl in ("redis-py", "redis-py-brpop"):
        # The filler of a consume scenario publishes its backlog the fastest way there is.
        return RedisPyProducer(args, pipeline=args.role == "fill")
    if impl == "redis-py-pipeline":
        return RedisPyProducer(args, pipeline=True)
    raise SystemExit(f"unknown implementation {impl!r}")


class RedisPyConsumer(Consumer):
    def __init__(self, args: c.Args, tally: c.Tally, brpop: bool) -> None:
        super().__init__(args, tally)
        self.brpop = brpop
        self.streams = mode(args.url) == "streams"

    async def start(self) -> None:
        self.redis = client(self.args.url)
        if self.streams:
            try:
                await self.redis.xgroup_create(self.args.topic, self.group, id="0", mkstream=True)
            except Exception as err:  # BUSYGROUP: the group exists (the drain phase)
                if "BUSYGROUP" not in str(err):
                    raise
        self.running = True
        self.task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        redis, topic, tally = self.redis, self.args.topic, self.tally

        async def handle(data: bytes) -> None:
            tally.seen(json.loads(data))

        if self.streams:
            while self.running:
                reply = await redis.xreadgroup(self.group, "c1", {topic: ">"}, count=100, block=100)
                for _, entries in reply or []:
                    for _, fields in entries:
                        await handle(fields[b"data"])
                    if entries:
                        await redis.xack(topic, self.group, *(e[0] for e in entries))
        elif self.brpop:
            while self.running:
                item = await redis.brpop([topic], timeout=0.1)
                if item is not None:
                    await handle(item[1])
        else:
            processing = f"{topic}.processing"
            while self.running:
                data = await redis.blmove(topic, processing, 0.1, "RIGHT", "LEFT")
                if data is not None:
                    await handle(data)
                    await redis.lrem(processing, 1, data)

    async def stop(self) -> None:
        # Not task.cancel(): redis-py may swallow a cancellation that lands in a blocking
        # command. The loop sees the flag within one block timeout (0.1 s).
        self.running = False
        await self.task
        await self.redis.aclose()


def consumer(args: c.Args, tally: c.Tally) -> Consumer:
    impl = args.impl
    if impl == "polybus":
        return PolybusConsumer(args, tally)
    if impl == "redis-py":
        return RedisPyConsumer(args, tally, brpop=False)
    if impl == "redis-py-brpop":
        return RedisPyConsumer(args, tally, brpop=True)
    raise SystemExit(f"unknown implementation {impl!r}")


if __name__ == "__main__":
    main(sys.argv[1:], producer, consumer)
