"""The ``polybus`` command: ``polybus consumer [--app MODULE] [--topic T ...]`` runs handlers;
``polybus dlq count|list|redrive TOPIC`` inspects and redrives dead letters."""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Optional

from ._config import configure_messaging
from ._dead_letters import DeadLetter, DeadLetters
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
    dlq = commands.add_parser("dlq", help="count, list or redrive dead letters")
    dlq.add_argument("action", choices=["count", "list", "redrive"])
    dlq.add_argument("topic", help="the dead-letter topic, e.g. orders.created.dlq")
    dlq.add_argument("--limit", type=int, help="list: how many (default 10); redrive: at most")
    dlq.add_argument("--to", metavar="TOPIC", help="redrive: publish to this topic instead")
    dlq.add_argument("--json", action="store_true", help="list: one JSON object per line")
    dlq.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE",
        help="module that calls configure_messaging (default: $POLYBUS_APP, if set)",
    )
    dlq.add_argument("--url", help="broker URL (default: the app's or the environment's)")
    args = parser.parse_args(argv)
    if args.command == "dlq":
        return _dead_letters(args)

    apps = args.app or [m for m in os.environ.get("POLYBUS_APP", "").split(",") if m]
    if not apps:
        print(
            "polybus: name the module that registers handlers with --app or POLYBUS_APP",
            file=sys.stderr,
        )
        return 2
    if not _import_apps(apps):
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
            f"{stats.get('released', 0)} given back not started, "
            f"{stats.get('dead_lettered', 0)} dead-lettered",
            file=sys.stderr,
        )
    return 0


def _import_apps(apps: Sequence[str]) -> bool:
    sys.path.insert(0, os.getcwd())
    for module in apps:
        try:
            importlib.import_module(module)
        except Exception as err:
            print(
                f"polybus: cannot import app module {module!r}: {type(err).__name__}: {err}",
                file=sys.stderr,
            )
            return False
    return True


def _dead_letters(args: argparse.Namespace) -> int:
    apps = args.app or [m for m in os.environ.get("POLYBUS_APP", "").split(",") if m]
    if not _import_apps(apps):
        return 2
    if args.url:
        configure_messaging(url=args.url)
    if args.limit is not None and args.limit < 1:
        print("polybus: --limit must be at least 1", file=sys.stderr)
        return 2
    dead = DeadLetters()
    try:
        if args.action == "count":
            print(asyncio.run(dead.count(args.topic)))
        elif args.action == "list":
            for letter in asyncio.run(dead.list(args.topic, args.limit or 10)):
                print(_letter_json(letter) if args.json else _letter_line(letter))
        else:
            result = asyncio.run(dead.redrive(args.topic, limit=args.limit, to=args.to))
            print(f"redriven: {result.moved}")
            for message_id, reason in result.left:
                print(f"left in place: {message_id}: {reason}")
            return 1 if result.left else 0
    except PolybusError as err:
        print(f"polybus: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def _letter_line(letter: DeadLetter) -> str:
    body = letter.body
    shown = json.dumps(body) if not isinstance(body, bytes) else repr(body)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return (
        f"{letter.id} from {letter.original_topic or '?'} after {letter.attempts or '?'} "
        f"attempt(s): {letter.error_type or 'error'}: {letter.error or '?'} | {shown}"
    )


def _letter_json(letter: DeadLetter) -> str:
    fields = dict(letter.__dict__)
    body = letter.body
    if isinstance(body, bytes):
        fields["payload_base64"] = base64.b64encode(letter.payload).decode("ascii")
    else:
        fields["body"] = body
    del fields["payload"]
    return json.dumps(fields)


if __name__ == "__main__":
    sys.exit(main())
