"""Fault drills with real processes: a consumer killed with SIGKILL mid-batch hands its
unacknowledged messages to another consumer of its group, on every broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polybus
import pytest
from conftest import BROKERS
from polybus import HandlerRunner, MessageContext, get_producer, message_handler

HERE = Path(__file__).parent
POLYBUS = Path(sys.executable).with_name("polybus")

# How soon each broker hands a dead consumer's messages to another: Kafka once the member's
# session times out, Redis lists and streams once the items are idle for this long, RabbitMQ as
# soon as the connection drops.
FAST_TAKEOVER = {
    "kafka": "&session.timeout.ms=6000&heartbeat.interval.ms=1000",
    "rabbitmq": "",
    "redis-list": "&visibility_timeout_ms=3000",
    "redis-streams": "&claim_idle_ms=3000",
}


def _with_params(url: str, extra: str) -> str:
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + extra.lstrip("&")


def _consumer(env: dict[str, str], out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(POLYBUS), "consumer", "--app", "cli_app"],
        cwd=HERE,
        env=dict(env, CLI_OUT=str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("name", list(FAST_TAKEOVER))
def test_a_consumer_killed_mid_batch_hands_its_messages_to_another(
    name: str, tmp_path: Path
) -> None:
    url = _with_params(BROKERS[name], FAST_TAKEOVER[name])
    topic, group = f"pytest.kill.{uuid.uuid4().hex[:10]}", f"kill-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, POLYBUS_URL=url, CLI_TOPIC=topic, CLI_GROUP=group, CLI_SLEEP="0.05")
    polybus.configure_messaging(url=url, group=group)
    total = 200

    # Declare the group's queue first (RabbitMQ keeps nothing for a queue nobody declared).
    @message_handler(topic=topic)
    async def record(message: dict, context: MessageContext) -> None:
        raise AssertionError("the declaring runner handles nothing")

    async def prepare_and_publish() -> list[str]:
        spec = polybus.registered_handlers([topic])[0]
        runner = HandlerRunner(spec, group=f"{group}.cli_app.record", concurrency=1)
        await runner.start()
        await runner.wait_ready()
        await runner.stop()
        receipts = await get_producer().send_batch(topic, [{"n": n} for n in range(total)])
        return [r.id for r in receipts]

    ids = set(asyncio.run(prepare_and_publish()))
    first_out, second_out = tmp_path / "first.txt", tmp_path / "second.txt"
    first = _consumer(env, first_out)
    second = None
    try:
        deadline = time.monotonic() + 60
        while len(_lines(first_out)) < 20:
            assert first.poll() is None, f"the consumer exited early: {first.communicate()}"
            assert time.monotonic() < deadline, "the first consumer handled nothing"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed_after = set(_lines(first_out))
        assert len(killed_after) < total, "killed too late to test anything"

        second = _consumer(env, second_out)
        deadline = time.monotonic() + 90
        while not ids <= killed_after | set(_lines(second_out)):
            assert second.poll() is None, f"the second consumer exited: {second.communicate()}"
            missing = len(ids - killed_after - set(_lines(second_out)))
            assert time.monotonic() < deadline, f"{missing} of {total} never redelivered"
            time.sleep(0.05)
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 0, stderr
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    taken_over = set(_lines(second_out))
    # At-least-once: what the first consumer had not acknowledged comes back, so the second
    # one handles everything the first did not finish (and maybe a few it finished unacked).
    assert ids - killed_after <= taken_over
    assert taken_over <= ids


def test_an_oversized_message_is_a_clear_error_and_the_producer_goes_on() -> None:
    polybus.configure_messaging(url=BROKERS["kafka"])
    topic = f"pytest.big.{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        producer = get_producer()
        with pytest.raises(polybus.PolybusError, match="too large"):
            await producer.send(topic, b"x" * 2_000_000)
        receipt = await producer.send(topic, {"small": True})
        assert receipt.id

    asyncio.run(main())
