"""``python -m harness``: runs the benchmark suite (see benches/README.md).

Every (scenario, size) runs Polybus and its comparators one after the other, each as a
subprocess of its own, on the same brokers; short runs are repeated in rounds and their median
kept (see ``rounds``). Progress goes to stderr, one line per run; the
results go to ``<out>/<UTC time>.json`` and ``.md`` with ``-throughput.png`` and
``-latency.png``, and the markdown table is printed at the end. ``--smoke`` runs every
scenario once with tiny counts into a temporary directory and exits 1 when a Polybus run
failed (comparators that cannot run are reported, not fatal).
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from . import brokers, machine, report, rounds
from .catalog import select
from .runner import Record, execute, warm_up
from .tools import BENCHES, Run

SMOKE = {"messages": 200, "latency_messages": 20, "latency_rate": 200.0, "idle": 0.2}
FULL = {"messages": 100_000, "latency_messages": 2000, "latency_rate": 1000.0, "idle": 2.0}


def options(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.sh",
        description="Runs the Polybus benchmark suite (benches/README.md).",
    )
    parser.add_argument("--messages", type=int, help="messages per run (default 100000; smoke 200)")
    parser.add_argument("--sizes", default=None, help="message sizes in bytes (default 100,1024)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="scenario glob, or scenario/impl glob (repeatable, or comma-separated)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts, every scenario once")
    parser.add_argument("--out", type=Path, help="results directory (default benches/results)")
    parser.add_argument("--latency-messages", type=int, help="paced messages per consume run")
    parser.add_argument("--latency-rate", type=float, help="paced messages per second")
    parser.add_argument("--timeout", type=float, help="seconds allowed per run")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"runs of each implementation lasting under {rounds.REPEAT_BELOW_S:.0f} s, the"
        " median kept (default 3; smoke 1)",
    )
    parser.add_argument("--list", action="store_true", help="list the runs and exit")
    return parser.parse_args(argv)


def _fmt_rate(value: Optional[float]) -> str:
    return f"{value:>12,.0f} msg/s" if value else " " * 18


def progress(i: int, total: int, record: Record, seconds: float, round_no: int) -> None:
    step = f"{i:>3}/{total}" if round_no == 1 else f"round {round_no}"
    head = f"[{step:>7}] {record.scenario:<25} {record.impl:<22} {record.size:>5} B"
    if record.status != "ok":
        line = f"{head}  FAILED: {record.reason}"
    else:
        p50, p99 = record.value("p50_ms"), record.value("p99_ms")
        lat = f"  p50 {p50:.2f} ms  p99 {p99:.2f} ms" if p50 is not None and p99 is not None else ""
        line = f"{head} {_fmt_rate(record.value('msgs_per_s'))}{lat}"
    print(f"{line}  ({seconds:.1f}s)", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    opts = options(argv)
    base = SMOKE if opts.smoke else FULL
    messages = opts.messages or int(base["messages"])
    sizes = [int(s) for s in (opts.sizes or ("100" if opts.smoke else "100,1024")).split(",")]
    latency_messages = opts.latency_messages or int(base["latency_messages"])
    latency_rate = opts.latency_rate or float(base["latency_rate"])
    round_count = max(1, opts.rounds or (1 if opts.smoke else 3))
    patterns = [p for arg in opts.only for p in arg.split(",") if p]
    chosen = select(patterns)
    if not chosen:
        print(f"bench: nothing matches {patterns}", file=sys.stderr)
        return 2

    now = datetime.datetime.now(datetime.timezone.utc)
    stem = now.strftime("%Y-%m-%dT%H%M%SZ")
    run_id = now.strftime("%m%d%H%M%S") + secrets.token_hex(2)
    groups: list[list[Run]] = []
    for scenario in dict.fromkeys(s for s, _ in chosen):
        for size in sizes:
            runs: list[Run] = []
            groups.append(runs)
            for s, impl in chosen:
                if s is not scenario:
                    continue
                scaled = max(min(100, messages), round(messages * impl.scale))
                n = messages if opts.smoke else scaled
                timeout = opts.timeout or (90.0 if opts.smoke else 180.0 + n / 100)
                topic = f"bench.{run_id}.{scenario.name}.{impl.name}.{size}"
                runs.append(
                    Run(
                        scenario,
                        impl,
                        size,
                        n,
                        topic,
                        latency_messages,
                        latency_rate,
                        float(base["idle"]),
                        timeout,
                    )
                )
    runs = [run for group in groups for run in group]
    if opts.list:
        for r in runs:
            print(f"{r.scenario.name}/{r.impl.name} {r.size} B x {r.messages}")
        return 0

    if opts.out is not None:
        out_dir = opts.out
    elif opts.smoke:
        # One directory, emptied each time: smoke runs leave nothing behind in the repo and
        # do not pile up.
        out_dir = Path(tempfile.gettempdir()) / "polybus-bench-smoke"
        shutil.rmtree(out_dir, ignore_errors=True)
    else:
        out_dir = BENCHES / "results"
    up = brokers.reachable()
    print(
        f"bench: {len(runs)} runs (short ones up to {round_count} times), {messages:,} messages,"
        f" sizes {sizes}; brokers "
        + ", ".join(f"{k} {'up' if v else 'DOWN'}" for k, v in up.items()),
        file=sys.stderr,
        flush=True,
    )
    info = machine.describe()
    started = time.time()
    records: list[Record] = []
    warmed: set[str] = set()

    def run_once(run: Run) -> Record:
        server = brokers.broker_of(run.scenario.broker)
        if not opts.smoke and up.get(server, False) and server not in warmed:
            warmed.add(server)
            broker = "redis-list" if server == "redis" else server
            print(f"bench: warming {server} up", file=sys.stderr, flush=True)
            complaint = warm_up(broker, f"bench.{run_id}.warm-up.{server}")
            if complaint:
                print(f"bench: {complaint}", file=sys.stderr, flush=True)
        if up.get(server, False):
            return execute(run)
        return Record(
            run.scenario.name,
            run.impl.name,
            run.impl.polybus,
            run.size,
            run.topic,
            status="failed",
            reason=f"{server} is not reachable",
        )

    done = 0
    for group in groups:
        # Round 1 runs every implementation; later rounds the short ones again, interleaved.
        tries: list[list[Record]] = [[] for _ in group]
        for round_no in range(1, round_count + 1):
            for run, runs_so_far in zip(group, tries, strict=True):
                if round_no > 1 and not rounds.wants_another(runs_so_far, round_count):
                    continue
                t0 = time.perf_counter()
                record = run_once(run if round_no == 1 else rounds.repeat(run, round_no))
                runs_so_far.append(record)
                done += round_no == 1
                progress(done, len(runs), record, time.perf_counter() - t0, round_no)
        records += [rounds.combine(runs_so_far) for runs_so_far in tries]

    info["loadavg_at_end"] = list(os.getloadavg())
    doc = {
        "started": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "duration_s": round(time.time() - started, 1),
        "machine": info,
        "options": {
            "messages": messages,
            "sizes": sizes,
            "only": patterns,
            "smoke": opts.smoke,
            "latency_messages": latency_messages,
            "latency_rate": latency_rate,
            "rounds": round_count,
            "repeat_below_s": rounds.REPEAT_BELOW_S,
        },
    }
    paths = report.write(out_dir, stem, doc, records)
    if not opts.smoke and opts.out is None:
        for kind, suffix in (
            ("md", ".md"),
            ("throughput", "-throughput.png"),
            ("latency", "-latency.png"),
        ):
            shutil.copyfile(paths[kind], out_dir / f"latest{suffix}")
    print(paths["md"].read_text())
    failed = [r for r in records if r.status != "ok"]
    polybus_failed = [r for r in failed if r.polybus]
    print(
        f"bench: {len(records)} runs in {time.time() - started:.0f}s, {len(failed)} did not"
        f" complete ({len(polybus_failed)} of them Polybus); results in {out_dir}",
        file=sys.stderr,
    )
    for name, path in paths.items():
        print(f"bench:   {name}: {path}", file=sys.stderr)
    if opts.smoke and polybus_failed:
        for bad in polybus_failed:
            print(
                f"bench: Polybus run {bad.scenario}/{bad.impl} failed: {bad.reason}",
                file=sys.stderr,
            )
        return 1
    return 0 if len(failed) < len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
