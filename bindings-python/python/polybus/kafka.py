"""The hand-built kafka consumer."""

from __future__ import annotations

from ._manual import ManualConsumer


class KafkaConsumer(ManualConsumer):
    """Consumes from kafka; see :class:`polybus._manual.ManualConsumer` for the parameters."""

    broker_kind = "kafka"


__all__ = ["KafkaConsumer"]
