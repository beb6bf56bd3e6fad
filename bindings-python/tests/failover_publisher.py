"""A publisher process for the failover drill: sends FAILOVER_COUNT numbered messages through a
failover producer, prints its status as JSON, then waits (to be killed) or drains."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import polybus

polybus.configure_messaging(
    url=os.environ["FAILOVER_URL"],
    failover={"spool_dir": os.environ["FAILOVER_SPOOL"], "probe_interval": "100ms"},
)


async def main() -> None:
    producer = polybus.get_producer()
    first, count = int(os.environ.get("FAILOVER_FIRST", "0")), int(os.environ["FAILOVER_COUNT"])
    for n in range(first, first + count):
        await producer.send(os.environ["FAILOVER_TOPIC"], {"n": n})
    status = producer.failover_status()
    assert status is not None
    print(json.dumps(status.__dict__), flush=True)
    if os.environ.get("FAILOVER_DRAIN"):
        deadline = time.monotonic() + 60
        while (status := producer.failover_status()) and status.state != "primary":
            if time.monotonic() > deadline:
                sys.exit(f"not drained: {status}")
            await asyncio.sleep(0.05)
        print(json.dumps(status.__dict__ if status else None), flush=True)
    else:
        await asyncio.sleep(3600)


asyncio.run(main())
