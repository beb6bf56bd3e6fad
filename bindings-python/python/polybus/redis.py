"""The hand-built redis consumer."""

from __future__ import annotations

from ._manual import ManualConsumer


class RedisConsumer(ManualConsumer):
    """Consumes from redis; see :class:`polybus._manual.ManualConsumer` for the parameters."""

    broker_kind = "redis"


__all__ = ["RedisConsumer"]
