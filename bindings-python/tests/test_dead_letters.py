"""Dead letters from Python and the ``polybus dlq`` command, on every broker that keeps them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polybus
import pytest
from conftest import BROKERS
from polybus import DeadLetters, HandlerRunner, get_producer, message_handler, registered_handlers

POLYBUS = Path(sys.executable).with_name("polybus")


async def _fail_then_recover(topic: str, orders: list[int]) -> tuple[HandlerRunner, list[int]]:
    """Runs a handler that fails every message (so each is dead-lettered), publishes
    ``orders``, and waits until all are dead letters. The returned runner keeps consuming; the
    list collects what it handles once ``failing`` is switched off."""
    handled: list[int] = []
    failing = [True]

    @message_handler(topic=topic, max_retries=1, retry_delay=0.05, jitter=0)
    async def charge(message: dict) -> None:
        if failing[0]:
            raise RuntimeError(f"card declined for order {message['order']}")
        handled.append(message["order"])

    runner = HandlerRunner(registered_handlers([topic])[0])
    await runner.start()
    await runner.wait_ready()
    await get_producer().send_batch(topic, [{"order": n} for n in orders])
    deadline = time.monotonic() + 30
    while runner.stats().get("dead_lettered", 0) < len(orders):
        assert time.monotonic() < deadline, f"not dead-lettered: {runner.stats()}"
        await asyncio.sleep(0.02)
    failing[0] = False
    return runner, handled


def test_count_list_and_redrive(broker_url: str, topic: str) -> None:
    async def main() -> None:
        runner, handled = await _fail_then_recover(topic, [1, 2, 3])
        dead = DeadLetters()
        dlq = f"{topic}.dlq"
        try:
            assert await dead.count(dlq) == 3
            letters = await dead.list(dlq, limit=10)
            assert sorted(letter.body["order"] for letter in letters) == [1, 2, 3]
            letter = letters[0]
            assert letter.original_topic == topic and letter.topic == dlq
            assert letter.attempts == 2 and letter.error_type == "RuntimeError"
            assert letter.error is not None and letter.error.startswith("card declined")
            assert letter.first_failure_ms and letter.last_failure_ms
            assert letter.first_failure_ms <= letter.last_failure_ms
            assert len(await dead.list(dlq, limit=1)) == 1
            assert await dead.count(dlq) == 3, "listing leaves them in place"

            result = await dead.redrive(dlq, limit=1)
            assert result.moved == 1 and not result.left
            result = await dead.redrive(dlq)
            assert result.moved == 2 and not result.left
            deadline = time.monotonic() + 30
            while len(handled) < 3:
                assert time.monotonic() < deadline, f"redriven but not handled: {handled}"
                await asyncio.sleep(0.02)
            assert sorted(handled) == [1, 2, 3]
            assert await dead.count(dlq) == 0
        finally:
            await runner.stop()

    asyncio.run(main())


def test_bad_arguments_are_clear_errors(topic: str) -> None:
    polybus.configure_messaging(url="memory://dlq-args")
    dead = DeadLetters()
    with pytest.raises(ValueError, match="limit"):
        asyncio.run(dead.list(f"{topic}.dlq", limit=0))
    with pytest.raises(polybus.ConfigurationError):
        asyncio.run(dead.count(""))


def test_pubsub_keeps_no_dead_letters(topic: str) -> None:
    base = os.environ.get("POLYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    polybus.configure_messaging(url=base + "?mode=pubsub")
    with pytest.raises(polybus.UnsupportedError, match="dead-letter"):
        asyncio.run(DeadLetters().count(f"{topic}.dlq"))


@pytest.mark.parametrize("name", ["kafka", "redis-list"])
def test_the_dlq_command(name: str, topic: str) -> None:
    url = BROKERS[name]
    polybus.configure_messaging(url=url)
    dlq = f"{topic}.dlq"

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [str(POLYBUS), "dlq", *args, dlq, "--url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def main() -> None:
        runner, handled = await _fail_then_recover(topic, [7, 8])
        try:
            counted = await cli("count")
            assert counted.returncode == 0, counted.stderr
            assert counted.stdout.strip() == "2"
            listed = await cli("list", "--json")
            assert listed.returncode == 0, listed.stderr
            rows = [json.loads(line) for line in listed.stdout.splitlines()]
            assert sorted(row["body"]["order"] for row in rows) == [7, 8]
            assert {row["original_topic"] for row in rows} == {topic}
            assert all(row["error_type"] == "RuntimeError" for row in rows)
            human = await cli("list")
            assert "card declined" in human.stdout and topic in human.stdout
            redriven = await cli("redrive")
            assert redriven.returncode == 0, redriven.stderr
            assert "redriven: 2" in redriven.stdout
            deadline = time.monotonic() + 30
            while len(handled) < 2:
                assert time.monotonic() < deadline, f"redriven but not handled: {handled}"
                await asyncio.sleep(0.02)
            assert (await cli("count")).stdout.strip() == "0"
        finally:
            await runner.stop()

    asyncio.run(main())
