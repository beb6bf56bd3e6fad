"""Running handlers against the in-memory broker in an application's own tests.

```python
async with polybus.testing.InMemoryApp() as app:
    await get_producer().send("orders.created", {"order_id": 1})
    await app.wait_handled(1)
```
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, Optional

from ._config import configure_messaging
from ._handlers import registered_handlers
from ._runner import HandlerRunner


class InMemoryApp:
    """Configures a fresh in-memory broker and runs the registered handlers on it."""

    def __init__(self, topics: Optional[Sequence[str]] = None) -> None:
        self._topics = topics
        self.runners: list[HandlerRunner] = []

    async def __aenter__(self) -> InMemoryApp:
        configure_messaging(url=f"memory://test-{uuid.uuid4().hex}")
        for spec in registered_handlers(self._topics):
            runner = HandlerRunner(spec)
            await runner.start()
            self.runners.append(runner)
        return self

    def handled(self) -> int:
        """Messages handled successfully so far, by all handlers."""
        return sum(r.stats().get("succeeded", 0) for r in self.runners)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per handler name."""
        return {r.spec.name: r.stats() for r in self.runners}

    async def wait_handled(self, count: int, timeout: float = 10.0) -> None:
        """Waits until ``count`` messages were handled successfully (or fail after ``timeout``)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.handled() < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"{self.handled()} of {count} messages handled in {timeout}s: {self.stats()}"
                )
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc: Any) -> None:
        for runner in self.runners:
            await runner.stop()
