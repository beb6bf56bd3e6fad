"""The ``polybus`` command: ``polybus consumer [--app MODULE] [--topic T ...]``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Optional

from ._config import configure_messaging
from ._polybus import PolybusError
from .consumer import run_consumers


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="polybus", description="Polybus messaging engine")
    commands = parser.add_subparsers(dest="command", required=True)
    consume = commands.add_parser("consumer", help="run the registered @message_handler functions")
    consume.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE",
        help="module that registers handlers (repeatable; default: $POLYBUS_APP)",
    )
    consume.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="TOPIC",
        help="only the handlers of this topic (repeatable; default: all)",
    )
    consume.add_argument("--group", help="consumer group for every handler")
    consume.add_argument("--concurrency", type=int, help="messages handled at once, per handler")
    consume.add_argument(
        "--url", help="broker URL (default: configure_messaging in the app, or the environment)"
    )
    args = parser.parse_args(argv)

    apps = args.app or [m for m in os.environ.get("POLYBUS_APP", "").split(",") if m]
    if not apps:
        print(
            "polybus: name the module that registers handlers with --app or POLYBUS_APP",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, os.getcwd())
    for module in apps:
        try:
            importlib.import_module(module)
        except Exception as err:
            print(
                f"polybus: cannot import app module {module!r}: {type(err).__name__}: {err}",
                file=sys.stderr,
            )
            return 2
    if args.url:
        configure_messaging(url=args.url)
    try:
        results = asyncio.run(
            run_consumers(args.topic or None, group=args.group, concurrency=args.concurrency)
        )
    except LookupError as err:
        print(f"polybus: {err}", file=sys.stderr)
        return 2
    except PolybusError as err:
        print(f"polybus: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for name, stats in results.items():
        print(
            f"polybus: {name}: {stats.get('succeeded', 0)} handled, "
            f"{stats.get('dead_lettered', 0)} dead-lettered",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
