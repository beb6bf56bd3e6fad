"""An application module for the CLI test: one handler that records what it handled."""

from __future__ import annotations

import asyncio
import os

from polybus import MessageContext, configure_messaging, message_handler

configure_messaging(url=os.environ["POLYBUS_URL"], group=os.environ["CLI_GROUP"])
_out = open(os.environ["CLI_OUT"], "a", buffering=1)  # noqa: SIM115 - one line per message, for the test


@message_handler(topic=os.environ["CLI_TOPIC"], concurrency=4)
async def record(message: dict, context: MessageContext) -> None:
    await asyncio.sleep(float(os.environ.get("CLI_SLEEP", "0.01")))
    _out.write(context.id + "\n")
