"""Messages published from PHP are consumed in Python and the other way round, on every broker."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import polybus
import pytest
from conftest import BROKERS
from polybus import (
    HandlerRunner,
    MessageContext,
    get_producer,
    message_handler,
    registered_handlers,
)

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/polybus/target"))
EXTENSION = TARGET / "debug" / "libpolybus_php.so"
SCRIPT = Path(__file__).with_name("interop.php")
NETWORK_BROKERS = ["kafka", "rabbitmq", "redis-list", "redis-streams"]


@pytest.fixture(scope="module")
def php() -> list[str]:
    """The PHP command with the extension loaded (built first; the PHP packages come from
    `make test`'s dependencies)."""
    assert shutil.which("php"), "php is missing: run scripts/install-php.sh (make test does)"
    subprocess.run(["cargo", "build", "--quiet", "-p", "polybus-php"], cwd=ROOT, check=True)
    return ["php", "-d", f"extension={EXTENSION}", str(SCRIPT)]


def _declare(topic: str, group: str) -> None:
    """Subscribes and stops once, so the group (a RabbitMQ queue) exists before publishing."""

    async def main() -> None:
        spec = registered_handlers([topic])[0]
        runner = HandlerRunner(spec, group=group)
        await runner.start()
        await runner.wait_ready()
        await runner.stop()

    asyncio.run(main())


@pytest.mark.parametrize("name", NETWORK_BROKERS)
def test_php_publishes_and_python_consumes(php: list[str], name: str) -> None:
    url, topic, group = (
        BROKERS[name],
        f"interop.{uuid.uuid4().hex[:10]}",
        f"interop-{uuid.uuid4().hex[:8]}",
    )
    polybus.configure_messaging(url=url)
    seen: list[tuple[dict, MessageContext]] = []

    @message_handler(topic=topic)
    async def handle(message: dict, context: MessageContext) -> None:
        seen.append((message, context))

    _declare(topic, group)
    published = subprocess.run(
        [*php, "publish", url, topic, "5"], capture_output=True, text=True, timeout=120
    )
    assert published.returncode == 0, published.stderr
    ids = published.stdout.split()

    async def consume() -> None:
        runner = HandlerRunner(registered_handlers([topic])[0], group=group)
        await runner.start()
        deadline = time.monotonic() + 60
        while len(seen) < 5:
            assert time.monotonic() < deadline, f"{len(seen)} of 5 from PHP"
            await asyncio.sleep(0.02)
        await runner.stop()

    asyncio.run(consume())
    assert sorted(c.id for _, c in seen) == sorted(ids)
    by_n = {m["n"]: (m, c) for m, c in seen}
    assert set(by_n) == set(range(5))
    message, context = by_n[3]
    assert message == {"n": 3, "from": "php"}
    assert (context.key, context.headers.get("lang"), context.content_type) == (
        "k3",
        "php",
        "application/json",
    )


@pytest.mark.parametrize("name", NETWORK_BROKERS)
def test_python_publishes_and_php_consumes(php: list[str], name: str) -> None:
    url, topic, group = (
        BROKERS[name],
        f"interop.{uuid.uuid4().hex[:10]}",
        f"interop-{uuid.uuid4().hex[:8]}",
    )
    polybus.configure_messaging(url=url)

    @message_handler(topic=topic)
    async def unused(message: dict) -> None: ...

    _declare(topic, group)

    async def publish() -> list[str]:
        producer = get_producer()
        receipts = [
            await producer.send(
                topic, {"n": n, "from": "python"}, key=f"k{n}", headers={"lang": "python"}
            )
            for n in range(5)
        ]
        return [r.id for r in receipts]

    ids = asyncio.run(publish())
    consumed = subprocess.run(
        [*php, "consume", url, topic, group, "5"], capture_output=True, text=True, timeout=120
    )
    assert consumed.returncode == 0, consumed.stderr + consumed.stdout
    messages = [json.loads(line) for line in consumed.stdout.splitlines() if line.strip()]
    assert sorted(m["id"] for m in messages) == sorted(ids)
    third = next(m for m in messages if m["payload"]["n"] == 3)
    assert third["payload"] == {"n": 3, "from": "python"}
    assert (third["key"], third["headers"].get("lang"), third["topic"]) == ("k3", "python", topic)
