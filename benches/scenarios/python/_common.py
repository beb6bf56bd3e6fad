"""What every Python scenario script shares: arguments, payloads, timing, the result line.

A scenario script runs one implementation (``--impl``) of one scenario and prints one line
``BENCH-RESULT {json}`` on stdout. Produce scenarios time publishing ``--messages`` messages.
Consume scenarios run three phases in the consumer process, which never publishes itself:

1. the consumer starts on an empty destination and idles (``idle_rss_mib``);
2. a pacer subprocess (the same script, ``--role pacer``, the same implementation's producer)
   publishes half a second of warm-up messages, then ``--latency-messages`` messages, at
   ``--latency-rate`` per second, each carrying its send time; the consumer records the
   end-to-end latency of each measured one (``p50_ms``, ``p99_ms``);
3. the consumer stops, a filler subprocess (``--role fill``) publishes ``--messages`` messages,
   and a new consumer in the same group drains them: msgs/s from the first to the last message
   received, CPU seconds and peak RSS of the consumer process over this phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

RESULT_PREFIX = "BENCH-RESULT "
CHUNK = 1000
# Chunks in flight at once when publishing asynchronously.
WINDOW = 4


@dataclass
class Args:
    """The command line of a scenario script."""

    impl: str
    role: str
    messages: int
    size: int
    topic: str
    url: str
    latency_messages: int
    latency_rate: float
    idle_seconds: float
    timeout: float


def parse_args(argv: Optional[Sequence[str]] = None) -> Args:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", required=True)
    parser.add_argument("--role", default="main", choices=["main", "pacer", "fill"])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--latency-rate", type=float, default=500.0)
    parser.add_argument("--idle-seconds", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    ns = parser.parse_args(argv)
    return Args(**{k.replace("-", "_"): v for k, v in vars(ns).items()})


# --------------------------------------------------------------------------------------------
# Payloads: a JSON object {"ts": <send time>, "ph": <phase>, "pad": "xxx..."} of `size` bytes.

_TS_SAMPLE = 1_700_000_000.123456


def message(size: int, phase: str = "d", ts: float = _TS_SAMPLE) -> dict[str, Any]:
    """A message whose compact JSON is `size` bytes (give or take the digits of ``ts``)."""
    base = len(json.dumps({"ts": _TS_SAMPLE, "ph": phase, "pad": ""}, separators=(",", ":")))
    return {"ts": ts, "ph": phase, "pad": "x" * max(0, size - base)}


def encode(body: dict[str, Any]) -> bytes:
    """How the comparators encode a message (Polybus does the same internally)."""
    return json.dumps(body, separators=(",", ":")).encode()


def chunks(total: int, size: int = CHUNK) -> list[int]:
    """``total`` split into chunk lengths of at most ``size``."""
    out = [size] * (total // size)
    if total % size:
        out.append(total % size)
    return out


async def in_flight(
    total: int, start: Callable[[int], Awaitable[Any]], window: int = WINDOW
) -> None:
    """Publishes ``total`` messages as chunks of ``CHUNK``: ``start(n)`` begins a chunk, and
    up to ``window`` chunks are in flight (the oldest is awaited before another begins), as an
    application publishing a stream with bounded memory does."""
    pending: deque[asyncio.Future[Any]] = deque()
    for n in chunks(total):
        pending.append(asyncio.ensure_future(start(n)))
        if len(pending) >= window:
            await pending.popleft()
    for chunk in pending:
        await chunk


# --------------------------------------------------------------------------------------------
# Process measurements.


QUIET_SHARE = 0.10
"""The broker is quiet when it uses less than this share of one core."""


def _process_cpu(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


async def broker_quiet(timeout: float = 15.0, window: float = 0.5) -> None:
    """Waits (at most ``timeout``) until the broker's process (``BENCH_BROKER_PID``, set by
    the harness) is quiet, so a timed phase does not start while it still works off the
    previous one (a backlog just written, topics just deleted): every implementation starts
    on an equally idle broker."""
    pid = int(os.environ.get("BENCH_BROKER_PID") or 0)
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        before = _process_cpu(pid)
        await asyncio.sleep(window)
        after = _process_cpu(pid)
        if before is None or after is None or after - before < QUIET_SHARE * window:
            return


def cpu_seconds() -> float:
    """CPU time of this process, every thread, user and system."""
    return time.process_time()


def _status_kib(name: str) -> float:
    with open("/proc/self/status") as f:
        found = re.search(rf"^{name}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def rss_mib() -> float:
    """Resident set size now."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss`."""
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> None:
    """Starts a new peak RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Results.


@dataclass
class Result:
    """One scenario run's numbers; ``emit`` prints them as the result line."""

    messages: int
    seconds: float
    cpu_s: float
    peak_rss_mib: float
    latencies_ms: list[float] = field(default_factory=list)
    idle_rss_mib: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def emit(self) -> None:
        out: dict[str, Any] = {
            "messages": self.messages,
            "seconds": round(self.seconds, 6),
            "msgs_per_s": round(self.messages / self.seconds, 1) if self.seconds > 0 else None,
            "cpu_s": round(self.cpu_s, 4),
            "peak_rss_mib": round(self.peak_rss_mib, 2),
        }
        if self.latencies_ms:
            out["p50_ms"] = round(percentile(self.latencies_ms, 50), 3)
            out["p99_ms"] = round(percentile(self.latencies_ms, 99), 3)
            out["latency_samples"] = len(self.latencies_ms)
        if self.idle_rss_mib is not None:
            out["idle_rss_mib"] = round(self.idle_rss_mib, 2)
        out.update(self.extra)
        print(RESULT_PREFIX + json.dumps(out), flush=True)


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


class Timer:
    """A produce measurement: wall time, CPU and peak RSS from ``start()`` to ``result()``."""

    def __init__(self) -> None:
        self.started = 0.0
        self.cpu = 0.0

    def start(self) -> None:
        reset_peak_rss()
        self.cpu = cpu_seconds()
        self.started = time.perf_counter()

    def result(self, messages: int, **extra: Any) -> Result:
        seconds = time.perf_counter() - self.started
        return Result(messages, seconds, cpu_seconds() - self.cpu, peak_rss_mib(), extra=extra)


class Tally:
    """What a consumer's handler records: drain timing and latencies of paced messages."""

    def __init__(self) -> None:
        self.drained = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies_ms: list[float] = []

    def seen(self, body: dict[str, Any]) -> None:
        now = time.time()
        phase = body.get("ph")
        if phase == "l":
            self.latencies_ms.append((now - float(body["ts"])) * 1000)
            return
        if phase == "w":
            return
        mono = time.perf_counter()
        if self.drained == 0:
            self.first = mono
        self.drained += 1
        self.last = mono


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Sleeps (blocking) until ``predicate()`` is true; raises after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.002)


async def await_until(predicate: Any, timeout: float, what: str) -> None:
    """Sleeps (asyncio) until ``predicate()`` is true; raises after ``timeout`` seconds."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.002)


class Helper:
    """A pacer or filler subprocess: this script again, with another role."""

    def __init__(self, args: Args, role: str) -> None:
        argv = [
            sys.executable,
            sys.argv[0],
            "consume",
            "--impl",
            args.impl,
            "--role",
            role,
            "--messages",
            str(args.messages),
            "--size",
            str(args.size),
            "--topic",
            args.topic,
            "--url",
            args.url,
            "--latency-messages",
            str(args.latency_messages),
            "--latency-rate",
            str(args.latency_rate),
            "--timeout",
            str(args.timeout),
        ]
        self.role = role
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)

    def done(self) -> bool:
        return self.proc.poll() is not None

    def check(self) -> None:
        """Raises when the helper failed."""
        code = self.proc.poll()
        if code not in (None, 0):
            raise RuntimeError(f"the {self.role} subprocess exited with status {code}")

    def wait(self, timeout: float) -> None:
        self.proc.wait(timeout)
        self.check()


def warmup_count(args: Args) -> int:
    """Paced messages sent before the measured ones (half a second's worth, at most as many
    as are measured), which consumers ignore: the first messages of a fresh producer and
    consumer pay for connections and fetch sessions."""
    return min(args.latency_messages, int(args.latency_rate / 2))


def pace_schedule(args: Args) -> list[tuple[float, str]]:
    """Send offsets (seconds from the start) and phases of the paced messages: warm-up
    (``w``), then latency (``l``)."""
    warmup = warmup_count(args)
    return [
        (i / args.latency_rate, "w" if i < warmup else "l")
        for i in range(warmup + args.latency_messages)
    ]


def fail(message_: str) -> None:
    print(message_, file=sys.stderr, flush=True)
    os._exit(1)
