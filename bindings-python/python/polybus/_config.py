"""Process-wide configuration: ``configure_messaging`` and ``get_producer``."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from typing import Any, Optional

from . import _polybus
from ._producer import Producer

_lock = threading.Lock()
_settings: dict[str, Any] = {}
_broker: Optional[_polybus.Broker] = None
_producer: Optional[Producer] = None


def configure_messaging(
    broker: Optional[str] = None,
    bootstrap_servers: Optional[str] = None,
    url: Optional[str] = None,
    *,
    group: Optional[str] = None,
    failover: Optional[dict[str, Any]] = None,
    **options: Any,
) -> None:
    """Chooses the broker: ``broker`` is ``"kafka"``, ``"rabbitmq"``, ``"redis"``, ``"memory"``
    or ``"null"``; ``url`` a full broker URL; ``bootstrap_servers`` the Kafka servers. Absent
    arguments are read from ``POLYBUS_URL``, ``KAFKA_BOOTSTRAP_SERVERS``, ``RABBITMQ_URL`` and
    ``REDIS_URL``. Other keyword options become URL parameters (``mode="streams"`` for Redis,
    librdkafka properties for Kafka, ...). ``group`` prefixes the default consumer groups.
    ``failover={"spool_dir": ..., "fsync": "always"}`` puts the producer behind a durable
    local spool: while the broker is unreachable, sends go to the spool (in order, surviving a
    restart) and are replayed to the broker once it is back.
    The connection is made on first use; errors name the bad part of the configuration."""
    global _broker, _producer
    with _lock:
        _settings.clear()
        _settings.update(
            broker=broker,
            bootstrap_servers=bootstrap_servers,
            url=url,
            group=group or "polybus",
            options={k: _option(v) for k, v in options.items()},
            failover={k: _option(v) for k, v in failover.items()} if failover else None,
        )
        _broker = None
        _producer = None


def _option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def default_group() -> str:
    """The prefix of default consumer group names."""
    return str(_settings.get("group") or "polybus")


def get_broker() -> _polybus.Broker:
    """The configured broker connection (made on first use)."""
    global _broker
    with _lock:
        if _broker is None:
            _broker = _polybus.Broker.connect(
                url=_settings.get("url"),
                broker=_settings.get("broker"),
                bootstrap_servers=_settings.get("bootstrap_servers"),
                options=_settings.get("options") or {},
                failover=_settings.get("failover"),
            )
            atexit.register(_close_at_exit, _broker)
        return _broker


def get_producer() -> Producer:
    """The producer of the configured broker."""
    global _producer
    broker = get_broker()
    with _lock:
        if _producer is None or _producer.broker is not broker:
            _producer = Producer(broker)
        return _producer


def _let_native_callbacks_finish() -> None:
    # A native thread that has just handed an awaitable its result may still be giving the
    # GIL back; finalizing the interpreter under it aborts the process. Sleeping releases the
    # GIL so it can finish. (Runs once, at exit, after every other atexit handler.)
    time.sleep(0.05)


atexit.register(_let_native_callbacks_finish)


def _forget_connections_in_child() -> None:
    # A forked child cannot use its parent's connections: it reconnects on first use.
    global _broker, _producer
    _broker = None
    _producer = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_in_child)


def _close_at_exit(broker: _polybus.Broker) -> None:
    # Flush what is queued so nothing is lost when the interpreter exits.
    with contextlib.suppress(_polybus.PolybusError):
        broker.close_blocking()
