"""The Python quickstart: a producer and two handlers in one app, on the embedded memory broker.

Run with ``make demo`` (or ``python examples/python/quickstart.py`` in a venv with polybus).
Set ``POLYBUS_URL`` to run the same app on Kafka, RabbitMQ or Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from polybus import (
    MessageContext,
    configure_messaging,
    get_producer,
    message_handler,
    provide,
    run_consumers,
)
from pydantic import BaseModel


class OrderCreated(BaseModel):
    order_id: int
    customer: str
    total: float


handled = asyncio.Queue[str]()


@message_handler(
    topic="orders.created", schema=OrderCreated, max_retries=3, retry_delay=0.2, jitter=0
)
async def charge(order: OrderCreated, context: MessageContext, ledger: list[str]) -> None:
    if order.order_id == 4 and context.attempt == 1:
        print(f"order {order.order_id}: payment gateway timed out (attempt 1), will retry")
        raise TimeoutError("payment gateway timed out")
    ledger.append(f"{order.customer}:{order.total:.2f}")
    charged = f"charged {order.total:.2f} (attempt {context.attempt})"
    print(f"order {order.order_id} for {order.customer}: {charged}")
    handled.put_nowait("charge")


@message_handler(topic=["orders.created", "orders.cancelled"])
def audit(message: dict, context: MessageContext) -> None:  # sync handlers run in a thread pool
    # One write per line: this runs beside the event loop's prints.
    sys.stdout.write(f"audit: {context.topic} {message}\n")


async def main() -> None:
    configure_messaging(url=os.environ.get("POLYBUS_URL", "memory://quickstart"))
    ledger: list[str] = []
    provide("ledger", ledger)
    stop = asyncio.Event()
    consumers = asyncio.create_task(run_consumers(stop=stop))

    producer = get_producer()
    orders = [(1, "ada", 12.5), (2, "grace", 40.0), (3, "ada", 7.25), (4, "linus", 99.9)]
    for order_id, customer, total in orders:
        order = {"order_id": order_id, "customer": customer, "total": total}
        await producer.send("orders.created", order, key=customer)
    await producer.send("orders.cancelled", {"order_id": 3})

    for _ in orders:
        await asyncio.wait_for(handled.get(), timeout=30)
    stop.set()
    stats = await consumers
    print(f"ledger: {', '.join(ledger)}")
    for name, counters in stats.items():
        print(f"{name}: {counters['succeeded']} handled, {counters['retried']} retried")


if __name__ == "__main__":
    # The engine's own records (a retry here) go to `logging`, under loggers named polybus.*.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
