"""The hand-built rabbitmq consumer."""

from __future__ import annotations

from ._manual import ManualConsumer


class RabbitMQConsumer(ManualConsumer):
    """Consumes from rabbitmq; see :class:`polybus._manual.ManualConsumer` for the parameters."""

    broker_kind = "rabbitmq"


__all__ = ["RabbitMQConsumer"]
