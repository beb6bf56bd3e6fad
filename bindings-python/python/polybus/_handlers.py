"""``@message_handler`` and dependency providers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

HandlerFunc = Callable[..., Any]


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler and how it consumes."""

    func: HandlerFunc
    topics: tuple[str, ...]
    group: Optional[str]
    max_retries: int
    retry_delay: float
    retry_backoff: float
    max_retry_delay: float
    jitter: float
    schema: Optional[type]
    concurrency: int
    prefetch: Optional[int]
    dead_letter: Optional[str]
    start: str
    dedup: Optional[str] = None
    dedup_ttl: float = 86400.0

    @property
    def name(self) -> str:
        """``module.qualname`` of the handler function."""
        return f"{self.func.__module__}.{self.func.__qualname__}"


_registry: list[HandlerSpec] = []
_providers: dict[str, Any] = {}


def message_handler(
    topic: Union[str, Sequence[str]],
    *,
    max_retries: int = 0,
    retry_delay: float = 1.0,
    retry_backoff: float = 2.0,
    max_retry_delay: float = 300.0,
    jitter: float = 0.1,
    schema: Optional[type] = None,
    group: Optional[str] = None,
    concurrency: int = 10,
    prefetch: Optional[int] = None,
    dead_letter: Optional[str] = None,
    start: str = "earliest",
    dedup: Union[bool, str, None] = None,
    dedup_ttl: float = 86400.0,
) -> Callable[[HandlerFunc], HandlerFunc]:
    """Registers an async or sync function as the handler of ``topic`` (one or several).

    The first parameter receives the message: a dict (or list, str, bytes as sent), or the
    validated ``schema`` (pydantic model) instance. Other parameters are resolved by name from
    providers (:func:`provide`); a parameter named ``context`` gets the :class:`MessageContext`.
    At most ``concurrency`` calls run at once, fed by up to ``prefetch`` messages the engine
    hands over ahead (``None``: the broker's default, 500 on Kafka and 100 elsewhere).
    Returning acknowledges the message. An exception retries after ``retry_delay`` seconds
    (times ``retry_backoff`` per retry, at most ``max_retry_delay``) up to ``max_retries``
    times, then dead-letters it to ``<topic>.dlq`` (``dead_letter`` names another topic, a
    suffix starting with ``.``, or ``"reject"``). A payload that fails validation is
    dead-lettered at once. ``dedup`` makes the handler idempotent: a message id handled within
    ``dedup_ttl`` seconds is acknowledged without calling it again (``True`` or ``"memory"``
    remembers ids in this process; a ``redis://`` URL shares them between processes). The
    retry, dead-letter and dedup logic runs in the engine."""
    options: dict[str, Any] = dict(
        max_retries=max_retries,
        retry_delay=retry_delay,
        retry_backoff=retry_backoff,
        max_retry_delay=max_retry_delay,
        jitter=jitter,
        schema=schema,
        group=group,
        concurrency=concurrency,
        prefetch=prefetch,
        dead_letter=dead_letter,
        start=start,
        dedup=dedup,
        dedup_ttl=dedup_ttl,
    )
    # Bad options fail here, where the decorator is written, not when a function is given.
    handler_spec(_check_only, topic, **options)

    def register(func: HandlerFunc) -> HandlerFunc:
        _registry.append(handler_spec(func, topic, **options))
        return func

    return register


def _check_only(message: Any) -> None:
    """Stands in for the function while ``message_handler`` checks its options."""


def handler_spec(
    func: HandlerFunc,
    topic: Union[str, Sequence[str]],
    *,
    group: Optional[str] = None,
    max_retries: int = 0,
    retry_delay: float = 1.0,
    retry_backoff: float = 2.0,
    max_retry_delay: float = 300.0,
    jitter: float = 0.1,
    schema: Optional[type] = None,
    concurrency: int = 10,
    prefetch: Optional[int] = None,
    dead_letter: Optional[str] = None,
    start: str = "earliest",
    dedup: Union[bool, str, None] = None,
    dedup_ttl: float = 86400.0,
) -> HandlerSpec:
    """How ``func`` consumes ``topic``, with the options (those of :func:`message_handler`)
    checked: what ``@message_handler``, ``Hub`` and the manual consumers build on."""
    topics = (topic,) if isinstance(topic, str) else tuple(topic)
    if not topics or not all(isinstance(t, str) and t for t in topics):
        raise ValueError(f"topic must be a non-empty string or list of strings, got {topic!r}")
    if max_retries < 0 or concurrency < 1 or (prefetch is not None and prefetch < 1):
        raise ValueError("max_retries must be >= 0, concurrency and prefetch >= 1")
    if not callable(func):
        raise TypeError(f"@message_handler needs a function, got {func!r}")
    if not inspect.signature(func).parameters:
        raise TypeError(f"{func.__qualname__} must take the message as its first parameter")
    return HandlerSpec(
        func=func,
        topics=topics,
        group=group,
        max_retries=max_retries,
        retry_delay=retry_delay,
        retry_backoff=retry_backoff,
        max_retry_delay=max_retry_delay,
        jitter=jitter,
        schema=schema,
        concurrency=concurrency,
        prefetch=prefetch,
        dead_letter=dead_letter,
        start=start,
        dedup=dedup_spec(dedup, dedup_ttl),
        dedup_ttl=dedup_ttl,
    )


HANDLER_OPTIONS = frozenset(inspect.signature(handler_spec).parameters) - {"func", "topic"}
"""The options :func:`handler_spec` takes besides the function and the topic."""


def dedup_spec(dedup: Union[bool, str, None], ttl: float) -> Optional[str]:
    """The engine's name for a dedup setting: ``None``, ``"memory"`` or a Redis URL."""
    if dedup is None or dedup is False:
        return None
    if ttl <= 0:
        raise ValueError(f"dedup_ttl must be more than 0 seconds, got {ttl!r}")
    if dedup is True:
        return "memory"
    if isinstance(dedup, str) and (
        dedup == "memory" or dedup.startswith(("redis://", "rediss://"))
    ):
        return dedup
    raise ValueError(f'dedup must be True, "memory" or a redis:// URL, got {dedup!r}')


def registered_handlers(topics: Optional[Sequence[str]] = None) -> list[HandlerSpec]:
    """The registered handlers, or those that read any of ``topics``."""
    if not topics:
        return list(_registry)
    wanted = set(topics)
    return [h for h in _registry if wanted.intersection(h.topics)]


def clear_handlers() -> None:
    """Forgets every registered handler (for tests)."""
    _registry.clear()


def provide(name: str, provider: Any) -> None:
    """Makes ``provider`` the value of handler parameters named ``name``: a plain value; a
    callable (sync or async) called for each message; or an async generator function whose
    first value is used for one message, after which the generator is closed (per-message
    scope, like a database session)."""
    _providers[name] = provider


def clear_providers() -> None:
    """Forgets every registered provider (for tests)."""
    _providers.clear()


def providers() -> dict[str, Any]:
    """The registered providers by name."""
    return dict(_providers)
