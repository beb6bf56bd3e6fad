"""`polybus consumer` as users run it: a subprocess, stopped with SIGTERM mid-stream."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
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

HERE = Path(__file__).parent
POLYBUS = Path(sys.executable).with_name("polybus")


@pytest.mark.parametrize("name", ["kafka", "rabbitmq", "redis-list", "redis-streams"])
def test_sigterm_drains_and_loses_nothing(name: str, tmp_path: Path) -> None:
    url, topic, group = (
        BROKERS[name],
        f"pytest.cli.{uuid.uuid4().hex[:10]}",
        f"cli-{uuid.uuid4().hex[:8]}",
    )
    out = tmp_path / "handled.txt"
    env = dict(os.environ, POLYBUS_URL=url, CLI_TOPIC=topic, CLI_GROUP=group, CLI_OUT=str(out))
    polybus.configure_messaging(url=url, group=group)
    total = 300

    # Declare the consumer's queue or group first, so brokers that keep nothing for absent
    # consumers (RabbitMQ without a bound queue) keep these messages.
    @message_handler(topic=topic)
    async def record(message: dict, context: MessageContext) -> None:
        remaining.append(context.id)

    remaining: list[str] = []
    spec = registered_handlers([topic])[0]
    runner_group = f"{group}.cli_app.record"

    async def prepare_and_publish() -> list[str]:
        runner = HandlerRunner(spec, group=runner_group, concurrency=1)
        await runner.start()
        await runner.wait_ready()
        await runner.stop()
        receipts = await get_producer().send_batch(topic, [{"n": n} for n in range(total)])
        return [r.id for r in receipts]

    ids = asyncio.run(prepare_and_publish())
    process = subprocess.Popen(
        [str(POLYBUS), "consumer", "--app", "cli_app"],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not out.exists() or len(out.read_text().splitlines()) < 30:
            assert process.poll() is None, f"the consumer exited early: {process.communicate()}"
            assert time.monotonic() < deadline, "the consumer handled nothing"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    handled = out.read_text().splitlines()
    assert len(handled) == len(set(handled)), "a message was handled twice"
    assert len(handled) < total, "stopped too late to test anything"
    # What was handed over but not started went back at once, not through the handler.
    given_back = re.search(r"(\d+) given back not started", stderr)
    assert given_back and int(given_back.group(1)) > 0, stderr

    async def consume_the_rest() -> None:
        runner = HandlerRunner(spec, group=runner_group)
        await runner.start()
        deadline = time.monotonic() + 60
        while len(handled) + len(remaining) < total:
            assert time.monotonic() < deadline, f"{len(handled)} + {len(remaining)} of {total}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await runner.stop()

    asyncio.run(consume_the_rest())
    assert not set(handled) & set(remaining), "acknowledged messages came back"
    assert set(handled) | set(remaining) == set(ids), "messages were lost"


def test_a_missing_app_module_is_a_clear_error() -> None:
    result = subprocess.run(
        [str(POLYBUS), "consumer", "--app", "no_such_module_here"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no_such_module_here" in result.stderr


def test_an_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        POLYBUS_URL="amqp://guest:s3cr3t@127.0.0.1:1/?connection_timeout=1000",
        CLI_TOPIC="t",
        CLI_GROUP="g",
        CLI_OUT=str(tmp_path / "o"),
    )
    result = subprocess.run(
        [str(POLYBUS), "consumer", "--app", "cli_app"],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "BrokerConnectionError" in result.stderr and "s3cr3t" not in result.stderr
