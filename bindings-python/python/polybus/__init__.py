"""Polybus: one messaging engine for Kafka, RabbitMQ, Redis and an embedded broker.

```python
from polybus import configure_messaging, get_producer, message_handler

configure_messaging(broker="kafka", bootstrap_servers="localhost:9092")
await get_producer().send("orders.created", {"order_id": 1})

@message_handler(topic="orders.created", max_retries=3, retry_delay=5)
async def handle(message: dict) -> None: ...
```
"""

from __future__ import annotations

from ._config import configure_messaging, get_broker, get_producer
from ._dead_letters import DeadLetter, DeadLetters, RedriveResult
from ._handlers import (
    HandlerSpec,
    clear_handlers,
    clear_providers,
    message_handler,
    provide,
    registered_handlers,
)
from ._hub import Hub
from ._logs import start as _start_logs
from ._polybus import (
    Broker,
    BrokerConnectionError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    InvalidMessageError,
    PolybusError,
    PolybusTimeoutError,
    UnsupportedError,
    __version__,
)
from ._producer import Producer
from ._runner import HandlerRunner
from ._types import FailoverStatus, MessageContext, Receipt
from .consumer import run_consumers

__all__ = [
    "Broker",
    "BrokerConnectionError",
    "BrokerError",
    "ClosedError",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetters",
    "FailoverStatus",
    "HandlerRunner",
    "HandlerSpec",
    "Hub",
    "InvalidMessageError",
    "MessageContext",
    "PolybusError",
    "PolybusTimeoutError",
    "Producer",
    "Receipt",
    "RedriveResult",
    "UnsupportedError",
    "__version__",
    "clear_handlers",
    "clear_providers",
    "configure_messaging",
    "get_broker",
    "get_producer",
    "message_handler",
    "provide",
    "registered_handlers",
    "run_consumers",
]

# The engine's log records go to `logging` (loggers under "polybus"): see `polybus._logs`.
_start_logs()
