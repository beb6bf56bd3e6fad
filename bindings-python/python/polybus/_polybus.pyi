"""Type stubs of the native module ``polybus._polybus`` (built from bindings-python/src)."""

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, Optional, Union

__version__: str

# topic, message (bytes, str, JSON-able value or pydantic model), key, headers, id
Outgoing = tuple[str, Any, Optional[str], Optional[dict[str, str]], Optional[str]]
# token, run, body (or NOT_DECODED), payload, content_type, topic, id, key, headers,
# timestamp_ms, attempt, partition, offset; with ``body_only`` the first five alone, payload
# and content_type None when the body was decoded.
Job = tuple[Any, ...]
# What `complete` takes: a token alone for a success, (token, error, error_type, permanent) for
# a failure, (token,) for a job not started when its consumer stopped (released to the broker).
Outcome = Union[int, tuple[int, str, Optional[str], bool], tuple[int]]

# Put in a job in place of a body the engine left to Python to decode.
NOT_DECODED: object

def _decode_body(payload: bytes, content_type: str) -> Any: ...

class PolybusError(Exception): ...
class ConfigurationError(PolybusError): ...
class BrokerConnectionError(PolybusError): ...
class BrokerError(PolybusError): ...
class InvalidMessageError(PolybusError): ...
class PolybusTimeoutError(PolybusError): ...
class ClosedError(PolybusError): ...
class UnsupportedError(PolybusError): ...

class Receipt:
    """What the broker reported for a published message."""

    def __init__(
        self,
        id: str,
        partition: Optional[int] = None,
        offset: Optional[int] = None,
        stream_id: Optional[str] = None,
        receivers: Optional[int] = None,
        spooled: bool = False,
    ) -> None: ...
    @property
    def id(self) -> str: ...
    @property
    def partition(self) -> Optional[int]:
        """Kafka: the partition written to."""
    @property
    def offset(self) -> Optional[int]:
        """Kafka: the offset written at."""
    @property
    def stream_id(self) -> Optional[str]:
        """Redis streams: the entry id."""
    @property
    def receivers(self) -> Optional[int]:
        """Redis pub/sub: how many subscribers received it."""
    @property
    def spooled(self) -> bool:
        """True when the message went to the failover spool (replayed once the broker is
        back)."""

class Broker:
    @staticmethod
    def connect(
        url: Optional[str] = None,
        broker: Optional[str] = None,
        bootstrap_servers: Optional[str] = None,
        options: Optional[dict[str, str]] = None,
        failover: Optional[dict[str, str]] = None,
    ) -> Broker: ...
    @staticmethod
    def hub(
        tasks_url: str,
        events_url: str,
        tasks_failover: Optional[dict[str, str]] = None,
        events_failover: Optional[dict[str, str]] = None,
    ) -> tuple[Broker, Broker]: ...
    def failover_status(self) -> Optional[dict[str, Any]]: ...
    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def capabilities(self) -> dict[str, bool]: ...
    def publish(self, outgoing: Outgoing, future: asyncio.Future[Receipt]) -> None: ...
    def publish_batch(
        self,
        topic: str,
        messages: Iterable[Any],
        keys: Optional[list[Optional[str]]] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> Awaitable[list[Receipt]]: ...
    def publish_blocking(self, outgoing: Outgoing) -> Receipt: ...
    def flush(self, timeout: float = 30.0) -> Awaitable[None]: ...
    def close(self) -> Awaitable[None]: ...
    def close_blocking(self) -> None: ...
    def consumer(self, settings: dict[str, Any]) -> Awaitable[NativeConsumer]: ...
    def dead_letter_count(self, dlq_topic: str) -> Awaitable[int]: ...
    def dead_letter_list(self, dlq_topic: str, limit: int) -> Awaitable[list[dict[str, Any]]]: ...
    def dead_letter_redrive(
        self, dlq_topic: str, limit: Optional[int] = None, to: Optional[str] = None
    ) -> Awaitable[tuple[int, list[tuple[str, str]]]]: ...

class NativeConsumer:
    def next_batch(self, max: int, wait: float) -> Awaitable[list[Job]]: ...
    def complete(self, outcomes: list[Outcome]) -> None: ...
    def wait_ready(self, timeout: float) -> Awaitable[None]: ...
    def stop(self) -> Awaitable[dict[str, int]]: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def in_flight(self) -> int: ...
