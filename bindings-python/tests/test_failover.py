"""The failover producer from Python: a broker outage spools sends to disk, a process killed
meanwhile loses nothing, and the spool drains in order once the broker is back. Each test runs a
Redis server of its own (with an append-only file), so stopping it disturbs nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import polybus
import pytest
from polybus import HandlerRunner, MessageContext, get_producer, message_handler

HERE = Path(__file__).parent


class RedisServer:
    """A Redis server of the test's own, on a free port, persisting every write."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.dir = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?mode=list"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
            + ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
            + ["--save", ""],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=20)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(data)
    yield server
    server.stop()


async def _drain_list(url: str, topic: str, count: int) -> list[int]:
    """Consumes ``count`` messages of ``topic`` and returns their numbers in arrival order."""
    polybus.configure_messaging(url=url)
    seen: list[int] = []

    @message_handler(topic=topic, concurrency=1, prefetch=1)
    async def record(message: dict, context: MessageContext) -> None:
        seen.append(message["n"])

    runner = HandlerRunner(polybus.registered_handlers([topic])[0])
    await runner.start()
    deadline = time.monotonic() + 60
    while len(seen) < count:
        assert time.monotonic() < deadline, f"{len(seen)} of {count} arrived"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    await runner.stop()
    return seen


def test_sends_spool_while_the_broker_is_down_and_drain_in_order(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    topic = f"pytest.failover.{uuid.uuid4().hex[:8]}"
    polybus.configure_messaging(
        url=redis_server.url,
        failover={"spool_dir": tmp_path / "spool", "probe_interval": "100ms", "fsync": "always"},
    )

    async def main() -> None:
        producer = get_producer()
        receipts = [await producer.send(topic, {"n": n}) for n in range(50)]
        assert all(r.spooled for r in receipts)
        status = producer.failover_status()
        assert status is not None and status.state == "spooling" and status.spool_depth == 50
        assert status.last_error
        redis_server.start()
        deadline = time.monotonic() + 30
        while (status := producer.failover_status()) and status.state != "primary":
            assert time.monotonic() < deadline, f"not drained: {status}"
            await asyncio.sleep(0.05)
        assert status is not None and status.spool_depth == 0 and status.replayed_total == 50
        receipt = await producer.send(topic, {"n": 50})
        assert not receipt.spooled

    asyncio.run(main())
    assert asyncio.run(_drain_list(redis_server.url, topic, 51)) == list(range(51))


def test_a_process_killed_while_spooling_loses_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    topic = f"pytest.failover.{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        FAILOVER_URL=redis_server.url,
        FAILOVER_SPOOL=str(tmp_path / "spool"),
        FAILOVER_TOPIC=topic,
    )

    def publisher(first: int, count: int, drain: bool) -> subprocess.Popen[str]:
        extra = {"FAILOVER_FIRST": str(first), "FAILOVER_COUNT": str(count)}
        if drain:
            extra["FAILOVER_DRAIN"] = "1"
        return subprocess.Popen(
            [sys.executable, str(HERE / "failover_publisher.py")],
            env=dict(env, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # The broker is up: the first 100 go straight to it.
    redis_server.start()
    first = publisher(0, 100, drain=True)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert json.loads(out.splitlines()[0])["spooled_total"] == 0

    # The broker goes down: the next 100 are spooled, then the process is killed.
    redis_server.stop()
    second = publisher(100, 100, drain=False)
    assert second.stdout is not None
    status = json.loads(second.stdout.readline())
    assert status["state"] == "spooling" and status["spool_depth"] == 100, status
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=30)

    # A new process on the same spool, still without the broker, adds 50 more behind them;
    # then the broker comes back and everything drains in order.
    third = publisher(200, 50, drain=True)
    assert third.stdout is not None
    status = json.loads(third.stdout.readline())
    assert status["spool_depth"] == 150, status
    redis_server.start()
    out, err = third.communicate(timeout=90)
    assert third.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["spool_depth"] == 0

    assert asyncio.run(_drain_list(redis_server.url, topic, 250)) == list(range(250))


def test_bad_failover_settings_name_the_bad_part(tmp_path: Path) -> None:
    polybus.configure_messaging(
        url="memory://failover-bad", failover={"spool_dir": tmp_path, "fsync": "sometimes"}
    )
    with pytest.raises(polybus.ConfigurationError, match="fsync"):
        polybus.get_producer()
    polybus.configure_messaging(url="memory://failover-bad", failover={"spool": tmp_path})
    with pytest.raises(polybus.ConfigurationError, match="spool"):
        polybus.get_producer()
