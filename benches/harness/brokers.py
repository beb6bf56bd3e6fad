"""Per-run broker preparation and clean-up, and the brokers' versions.

Each run has a topic of its own (``bench.<run id>.<scenario>.<impl>.<size>``): Kafka topics
are created with 4 partitions before the run (as Polybus' URL asks, so every client gets the
same topic) and deleted after it; RabbitMQ queues ``<topic>.g`` and ``<topic>.g.dlq`` and Redis
keys containing the topic are deleted after it. Clean-up failures are reported, not fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import time
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from .tools import CACHE, URLS

PARTITIONS = 4


QUIET_SHARE = 0.10
"""A broker is quiet when it uses less than this share of one core."""


def server_pid(broker: str) -> Optional[int]:
    """The pid of the local server behind ``broker`` (``redis-list`` -> Redis), from the pid
    file its provisioning script writes, or ``None``."""
    name = "redis" if broker.startswith("redis") else broker
    try:
        return int((CACHE / name / f"{name}.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def _cpu(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def wait_quiet(broker: str, timeout: float = 15.0, window: float = 0.5) -> float:
    """Waits (at most ``timeout``) until ``broker``'s server is quiet (the previous run's
    clean-up done) and returns the seconds waited."""
    pid = server_pid(broker)
    started = time.monotonic()
    while pid and time.monotonic() - started < timeout:
        before = _cpu(pid)
        time.sleep(window)
        after = _cpu(pid)
        if before is None or after is None or after - before < QUIET_SHARE * window:
            break
    return time.monotonic() - started


def _bootstrap() -> str:
    return urlsplit(URLS["kafka"]).netloc


def _partitions() -> int:
    query = parse_qs(urlsplit(URLS["kafka"]).query)
    return int(query.get("polybus.topic.partitions", [PARTITIONS])[0])


def prepare(broker: str, topic: str) -> None:
    """Creates what a run needs before it starts (Kafka: its topic)."""
    if broker != "kafka":
        return
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": _bootstrap(), "log_level": 3})
    futures = admin.create_topics([NewTopic(topic, _partitions(), 1)], operation_timeout=30)
    for future in futures.values():
        future.result(timeout=60)


def cleanup(broker: str, topic: str) -> Optional[str]:
    """Deletes what a run left behind; returns a complaint, or None."""
    try:
        if broker == "kafka":
            _kafka_delete(topic)
        elif broker == "rabbitmq":
            asyncio.run(_rabbitmq_delete([f"{topic}.g", f"{topic}.g.dlq", topic]))
        else:
            _redis_delete(topic)
    except Exception as err:  # clean-up must never stop the suite
        return f"clean-up of {topic} failed: {err}"
    return None


def _kafka_delete(topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": _bootstrap(), "log_level": 3})
    existing = admin.list_topics(timeout=30).topics
    doomed = [t for t in existing if t == topic or t.startswith(topic + ".")]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result(timeout=60)


async def _rabbitmq_delete(queues: list[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(URLS["rabbitmq"].split("?", 1)[0])
    try:
        for queue in queues:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await connection.close()


def _redis_client() -> Any:
    import redis

    parts = urlsplit(URLS["redis-list"])
    db = int(parts.path.strip("/") or 0)
    return redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db)


def _redis_delete(topic: str) -> None:
    client = _redis_client()
    try:
        keys = list(client.scan_iter(match=f"*{topic}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def versions() -> dict[str, Optional[str]]:
    """The brokers' versions, as far as they can be asked."""
    out: dict[str, Optional[str]] = {"kafka": None, "rabbitmq": None, "redis": None}
    with contextlib.suppress(Exception):
        conf = (CACHE / "kafka" / "conf" / "server.properties").read_text()
        found = re.search(r"\(Kafka ([0-9.]+)\)", conf)
        out["kafka"] = found.group(1) if found else None
    with contextlib.suppress(Exception):
        out["rabbitmq"] = asyncio.run(_rabbitmq_version())
    with contextlib.suppress(Exception):
        client = _redis_client()
        out["redis"] = str(client.info("server")["redis_version"])
        client.close()
    return out


async def _rabbitmq_version() -> Optional[str]:
    import aio_pika

    connection = await aio_pika.connect(URLS["rabbitmq"].split("?", 1)[0])
    try:
        underlay = connection.transport
        if underlay is None:
            return None
        props = underlay.connection.server_properties
        version = props.get("version")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await connection.close()


def reachable() -> dict[str, bool]:
    """Which brokers answer (a quick TCP connect)."""
    import socket

    out = {}
    for name, url in (
        ("kafka", URLS["kafka"]),
        ("rabbitmq", URLS["rabbitmq"]),
        ("redis", URLS["redis-list"]),
    ):
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
                out[name] = True
        except OSError:
            out[name] = False
    return out


def broker_of(scenario_broker: str) -> str:
    return "redis" if scenario_broker.startswith("redis") else scenario_broker


def run_quiet(argv: list[str]) -> str:
    with contextlib.suppress(Exception):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return (done.stdout + done.stderr).strip()
    return ""
