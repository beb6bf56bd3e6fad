"""Running registered handlers until a signal: what ``polybus consumer`` does."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from typing import Optional

from ._handlers import registered_handlers
from ._runner import HandlerRunner


async def run_consumers(
    topics: Optional[Sequence[str]] = None,
    *,
    group: Optional[str] = None,
    concurrency: Optional[int] = None,
    stop: Optional[asyncio.Event] = None,
) -> dict[str, dict[str, int]]:
    """Runs the registered handlers (those reading ``topics`` when given) until ``stop`` is
    set or SIGTERM/SIGINT arrives; then stops fetching, drains in-flight messages and returns
    each handler's counters."""
    specs = registered_handlers(topics)
    if not specs:
        wanted = f" for {', '.join(topics)}" if topics else ""
        raise LookupError(
            f"no @message_handler is registered{wanted}; import the module that defines them"
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not possible off the main thread or where there are no signals: then `stop` only.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runners = [HandlerRunner(spec, group=group, concurrency=concurrency) for spec in specs]
    started: list[HandlerRunner] = []
    try:
        for runner in runners:
            await runner.start()
            started.append(runner)
        await stop.wait()
    finally:
        results = {}
        for runner in started:
            results[runner.spec.name] = await runner.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return results
