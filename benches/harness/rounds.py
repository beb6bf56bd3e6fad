"""Rounds: a short run is repeated and its median kept, so one noisy run decides nothing.

On a small shared machine two runs of the same thing differ by a third. Every implementation
of a (scenario, size) runs once, then the ones whose measured phase lasted under
``REPEAT_BELOW_S`` run again, round after round, interleaved with each other (a slow spell of
the machine hits every implementation of the round, not one) until each has ``rounds`` runs.
Longer runs average the noise out themselves and run once. The table shows each
implementation's median run (throughput, CPU, memory); latency and idle memory are measured in
the first round only (the later ones skip the paced phase and the idle wait).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any, Optional

from .runner import Record
from .tools import Run

REPEAT_BELOW_S = 10.0
"""A run whose measured phase lasted less than this (seconds) is repeated."""


def duration(record: Record) -> Optional[float]:
    """How long the run's measured phase lasted (the whole process for the brokers' own
    tools, which report no phase of their own)."""
    seconds = record.value("seconds")
    if seconds is None:
        seconds = record.process.get("wall_s")
    return float(seconds) if seconds is not None else None


def wants_another(records: Sequence[Record], rounds: int) -> bool:
    """Whether the runs so far of one implementation call for one more: fewer than
    ``rounds``, the last one complete, and the first short."""
    if not records or len(records) >= rounds or records[-1].status != "ok":
        return False
    first = duration(records[0])
    return first is not None and first < REPEAT_BELOW_S


def repeat(run: Run, round_no: int) -> Run:
    """The run again, on a topic of its own, without the latency phase and the idle wait."""
    return dataclasses.replace(
        run, topic=f"{run.topic}.r{round_no}", latency_messages=0, idle_seconds=0.0
    )


def combine(records: Sequence[Record]) -> Record:
    """One record for the runs of one implementation: the median run by msgs/s (the lower
    middle one of an even count), with the first run's latency and idle memory, and every
    run's throughput in ``rounds``."""
    first = records[0]
    rated = [(rate, r) for r in records if r.status == "ok" and (rate := r.value("msgs_per_s"))]
    if not rated:
        return first
    rated.sort(key=lambda pair: pair[0])
    median = rated[(len(rated) - 1) // 2][1]
    result: dict[str, Any] = dict(first.result) if first.status == "ok" else {}
    result.update({k: v for k, v in median.result.items() if v is not None})
    if len(rated) > 1:
        rates = [rate for rate, _ in rated]
        half_range = (rates[-1] - rates[0]) / 2
        result["spread_pct"] = round(100 * half_range / statistics.median(rates), 1)
    combined = dataclasses.replace(median, result=result, topic=first.topic)
    combined.rounds = [
        {
            "msgs_per_s": r.value("msgs_per_s"),
            "seconds": r.value("seconds"),
            "cpu_s": r.value("cpu_s"),
            "status": r.status,
            "reason": r.reason,
        }
        for r in records
    ]
    return combined
