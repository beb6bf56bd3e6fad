"""Runs one implementation as a subprocess and reads its numbers.

The process is waited for with ``wait4``, so its CPU seconds are its own (with its helper
subprocesses); its peak RSS is its VmHWM, sampled while it runs. Scenario scripts also report
CPU seconds and peak RSS over their measured phase, which the tables prefer; the brokers' own
tools report neither and are measured as whole processes (JVM start-up included).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from . import brokers
from .tools import CEILING, ROOT, URLS, Command, Run, command

RESULT_PREFIX = "BENCH-RESULT "


@dataclass
class Record:
    """The outcome of one run, as it goes into the JSON results."""

    scenario: str
    impl: str
    polybus: bool
    size: int
    topic: str
    status: str = "ok"  # ok | failed
    reason: Optional[str] = None
    # The end of a failed run's stderr (helpers' too: they share it), for the JSON results.
    stderr_tail: Optional[str] = None
    result: dict[str, Any] = field(default_factory=dict)
    process: dict[str, Any] = field(default_factory=dict)
    loadavg_before: Optional[float] = None
    argv: list[str] = field(default_factory=list)
    # Every run's numbers when the implementation ran more than once (see ``rounds``).
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def value(self, key: str) -> Optional[float]:
        """A number from the scenario's own result, else from the process measurement."""
        if key in self.result and self.result[key] is not None:
            return float(self.result[key])
        mapped = {"cpu_s": "cpu_s", "peak_rss_mib": "maxrss_mib"}.get(key)
        if mapped and self.process.get(mapped) is not None:
            return float(self.process[mapped])
        return None


def loadavg() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def execute(run: Run) -> Record:
    record = Record(
        run.scenario.name,
        run.impl.name,
        run.impl.polybus,
        run.size,
        run.topic,
        loadavg_before=loadavg(),
    )
    cmd = command(run)
    if isinstance(cmd, str):
        record.status, record.reason = "failed", f"not available: {cmd}"
        return record
    record.argv = _shown(cmd.argv)
    broker = run.scenario.broker
    try:
        brokers.prepare(broker, run.topic)
    except Exception as err:
        record.status, record.reason = "failed", f"could not prepare the broker: {err}"
        return record
    # Every run starts on a quiet broker and can wait for it again between its own phases.
    pid = brokers.server_pid(broker)
    if pid:
        cmd.env["BENCH_BROKER_PID"] = str(pid)
    waited = brokers.wait_quiet(broker)
    try:
        _measure(cmd, run.timeout, record)
        record.process["broker_quiet_wait_s"] = round(waited, 2)
    finally:
        complaint = brokers.cleanup(broker, run.topic)
        if complaint:
            record.process["cleanup"] = complaint
    return record


WARM_UP = {
    "kafka": (("produce", 2_000_000), ("pubsub", 300_000)),
    "rabbitmq": (("pubsub", 30_000),),
    "redis-list": (("pubsub", 300_000),),
}
"""What the warm-up sends through each broker: (ceiling mode, messages), a few seconds each."""


def warm_up(broker: str, topic: str) -> Optional[str]:
    """Publishes and consumes through ``broker`` untimed, with the Rust core, before its first
    run: a broker that has been idle (Kafka's JIT cold) served the first implementation measured
    on it at half the rate of the next ones. Returns a complaint, or None."""
    if not CEILING.is_file():
        return f"{CEILING} is not built"
    try:
        for mode, messages in WARM_UP[broker]:
            argv = [str(CEILING), mode, "--url", URLS[broker], "--topic", f"{topic}.{mode}"]
            argv += ["--messages", str(messages), "--size", "100"]
            brokers.prepare(broker, f"{topic}.{mode}")
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=180, check=False
                )
            finally:
                brokers.cleanup(broker, f"{topic}.{mode}")
            if done.returncode != 0:
                return f"warm-up of {broker} failed: {done.stderr.strip()[-300:]}"
    except Exception as err:  # a failed warm-up must not stop the suite
        return f"warm-up of {broker} failed: {err}"
    return None


def _shown(argv: list[str]) -> list[str]:
    # redis-benchmark's payload argument is `size` x's: shorten it for the record.
    return [a if len(a) <= 80 else f"{a[:8]}...({len(a)} bytes)" for a in argv]


def _measure(cmd: Command, timeout: float, record: Record) -> None:
    env = {**os.environ, **cmd.env}
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd.argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    status, usage, peak_kib, timed_out = _wait4(proc.pid, timeout)
    proc.returncode = status  # reaped here; keep Popen from waiting again
    for reader in readers:
        reader.join(10)
    wall = time.perf_counter() - started
    stdout = b"".join(out).decode(errors="replace")
    stderr = b"".join(err).decode(errors="replace")
    record.process = {
        "wall_s": round(wall, 3),
        "exit": status,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3) if usage else None,
        "maxrss_mib": round(peak_kib / 1024, 2) if peak_kib else None,
    }
    if timed_out:
        record.status, record.reason = "failed", f"timed out after {timeout:.0f}s"
    else:
        try:
            record.result = parse(cmd.parser, stdout)
        except ValueError as problem:
            record.status = "failed"
            tail = _last_line(stderr) or _last_line(stdout) or "no output"
            record.reason = f"exit status {status}: {tail}" if status else f"{problem}: {tail}"
        else:
            if status != 0:
                record.status = "failed"
                record.reason = f"exit status {status}: {_last_line(stderr)}"
    if record.status == "failed":
        record.stderr_tail = _tail(stderr)


def _tail(text: str, limit: int = 4000) -> Optional[str]:
    """The end of a failed run's output, where its error (and a helper's) is."""
    text = text.strip()
    return text[-limit:] if text else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    interesting = [line for line in lines if not line.startswith("SLF4J")]
    line = (interesting or lines or [""])[-1]
    return line[:300]


def _wait4(pid: int, timeout: float) -> tuple[int, Any, float, bool]:
    """Waits for ``pid`` (killing its process group after ``timeout`` s); returns its exit
    status (negative: killed by that signal), its resource usage, its peak RSS in KiB as last
    sampled (every 20 ms), and whether it timed out."""
    deadline = time.monotonic() + timeout
    timed_out = False
    peak = 0.0
    while True:
        peak = max(peak, _vm_hwm_kib(pid))
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig)
                time.sleep(1)
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    break
            if done:
                break
        time.sleep(0.02)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    # Helpers a timed-out scenario started are in its process group.
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return code, usage, peak, timed_out


def _vm_hwm_kib(pid: int) -> float:
    """The process's peak RSS so far. Not ``ru_maxrss``: Linux carries the parent's peak
    across fork and exec into it, so a small tool started from this (bigger) process would
    report this process's size."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


# --------------------------------------------------------------------------------------------
# Output parsers


def parse(parser: str, stdout: str) -> dict[str, Any]:
    if parser == "result-line":
        return _result_line(stdout)
    if parser == "producer-performance":
        return _producer_performance(stdout)
    if parser == "perf-test":
        return _perf_test(stdout)
    if parser == "redis-benchmark":
        return _redis_benchmark(stdout)
    raise ValueError(f"unknown parser {parser}")


def _result_line(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX) :]))
    raise ValueError("no result line")


_PP = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec .*?, ([\d.]+) ms avg latency, ([\d.]+) ms max "
    r"latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th"
)


def _producer_performance(stdout: str) -> dict[str, Any]:
    found = _PP.findall(stdout)
    if not found:
        raise ValueError("no ProducerPerformance summary")
    sent, rate, _avg, _max, p50, _p95, p99 = found[-1]
    return {
        "messages": int(sent),
        "msgs_per_s": float(rate),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "latency_kind": "produce acknowledgement",
    }


def _perf_test(stdout: str) -> dict[str, Any]:
    sending = re.search(r"sending rate avg: ([\d.]+) msg/s", stdout)
    receiving = re.search(r"receiving rate avg: ([\d.]+) msg/s", stdout)
    latency = re.search(
        r"consumer latency min/median/75th/95th/99th (\d+)/(\d+)/(\d+)/(\d+)/(\d+) (µs|ms)", stdout
    )
    if not receiving:
        raise ValueError("no PerfTest summary")
    out: dict[str, Any] = {
        "msgs_per_s": float(receiving.group(1)),
        "publish_msgs_per_s": float(sending.group(1)) if sending else None,
    }
    if latency:
        scale = 1000.0 if latency.group(6) == "µs" else 1.0
        out["p50_ms"] = int(latency.group(2)) / scale
        out["p99_ms"] = int(latency.group(5)) / scale
    return out


def _redis_benchmark(stdout: str) -> dict[str, Any]:
    rows = list(csv.reader(io.StringIO(stdout)))
    header = next((r for r in rows if r and r[0] == "test"), None)
    data = [r for r in rows if r and r[0] != "test" and len(r) > 1]
    if not data:
        raise ValueError("no redis-benchmark CSV row")
    row = data[-1]
    rate = float(row[1])
    if not math.isfinite(rate):
        # Its clock counts milliseconds: a smoke run's few pipelined requests can take none.
        raise ValueError("redis-benchmark finished too fast to time")
    out: dict[str, Any] = {"msgs_per_s": rate}
    if header and "p50_latency_ms" in header and "p99_latency_ms" in header:
        out["p50_ms"] = float(row[header.index("p50_latency_ms")])
        out["p99_ms"] = float(row[header.index("p99_latency_ms")])
        out["latency_kind"] = "request round trip"
    return out
