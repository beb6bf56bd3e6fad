"""How the Python side shares the jobs the engine hands over among ``concurrency`` workers.

The engine's side is replaced here by a feed that hands over fixed batches, so that what
arrives together is known exactly; the broker tests drive the same runner end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from polybus._handlers import handler_spec
from polybus._runner import HandlerRunner


class Feed:
    """Hands over `batches` one per call, each a moment after the call, then nothing until
    stopped; keeps the outcomes."""

    def __init__(self, batches: list[list[tuple[Any, ...]]]) -> None:
        self.batches = batches
        self.outcomes: list[Any] = []
        self.stopped = asyncio.Event()

    async def consumer(self, options: dict[str, Any]) -> Feed:  # the broker's part
        return self

    async def next_batch(self, max: int, wait: float) -> list[tuple[Any, ...]]:
        if self.batches:
            await asyncio.sleep(0.01)  # every worker idle by then
            return self.batches.pop(0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), wait)
        return []

    def complete(self, outcomes: list[Any]) -> None:
        self.outcomes.extend(outcomes)

    async def stop(self) -> dict[str, int]:
        self.stopped.set()
        return {}


def jobs(first: int, count: int) -> list[tuple[Any, ...]]:
    """Jobs of messages ``{"n": first}``...: token n, no run (no order to keep), decoded."""
    return [(n, None, {"n": n}, None, None) for n in range(first, first + count)]


def run(
    handle: Callable[[dict[str, Any]], Awaitable[None]],
    batches: list[list[tuple[Any, ...]]],
    concurrency: int,
    until: Callable[[], bool],
) -> list[Any]:
    feed = Feed(batches)

    async def main() -> None:
        runner = HandlerRunner(
            handler_spec(handle, "t", concurrency=concurrency),
            feed,  # type: ignore[arg-type]
            group="g",
        )
        await runner.start()

        async def finished() -> None:
            while not until():
                await asyncio.sleep(0.001)

        try:
            await asyncio.wait_for(finished(), 10)
        finally:
            await runner.stop()

    asyncio.run(main())
    return feed.outcomes


def test_a_waiting_handler_does_not_hold_up_what_arrived_with_it() -> None:
    others_done = asyncio.Event()
    done: list[int] = []

    async def handle(message: dict[str, Any]) -> None:
        if message["n"] == 0:
            await others_done.wait()
        done.append(message["n"])
        if len(done) == 39:
            others_done.set()

    outcomes = run(handle, [jobs(0, 40)], concurrency=2, until=lambda: len(done) == 40)
    assert done[-1] == 0 and sorted(done) == list(range(40))
    assert sorted(outcomes) == list(range(40))


def test_handlers_that_wait_run_up_to_concurrency_at_once_from_one_batch() -> None:
    running = most = 0
    done: list[int] = []

    async def handle(message: dict[str, Any]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        done.append(message["n"])

    run(handle, [jobs(0, 50)], concurrency=10, until=lambda: len(done) == 50)
    assert most == 10


def test_a_handler_cancelled_from_elsewhere_fails_its_message_and_its_run_goes_on() -> None:
    # Messages 0 and 1 share a run (one key: handled in order); 0's handler awaits a future
    # that something else cancels.
    done: list[int] = []

    async def handle(message: dict[str, Any]) -> None:
        if message["n"] == 0:
            other = asyncio.get_running_loop().create_future()
            other.cancel()
            await other
        done.append(message["n"])

    batch = [(0, 7, {"n": 0}, None, None), (1, 7, {"n": 1}, None, None)] + jobs(2, 3)
    outcomes = run(handle, [batch], concurrency=2, until=lambda: len(done) == 4)
    assert sorted(done) == [1, 2, 3, 4]
    assert (0, "the handler was cancelled", "CancelledError", False) in outcomes
    assert sorted(o for o in outcomes if isinstance(o, int)) == [1, 2, 3, 4]
