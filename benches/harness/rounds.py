"""Rounds: a short run is repeated and its median kept, so one noisy run decides nothing.

On a small shared machine two runs of the same thing differ by a third. Every implementation
of a (scenario, size) runs once, then the ones whose measured phase lasted under
``REPEAT_BELOW_S`` run again, round after round, interleaved with each other (a slow spell of
the machine hits every implementation of the round, not one) until each has ``rounds`` runs.
Longer runs average the noise out themselves and run once. A repeated run is the same run on a
topic of its own, every phase included (without the paced phase, Polybus' Kafka drain that
follows it read a third lower). The table shows each implementation's median run.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Optional

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
    """The run again, on a topic of its own."""
    return dataclasses.replace(run, topic=f"{run.topic}.r{round_no}")


def combine(records: Sequence[Record]) -> Record:
    """One record for the runs of one implementation: the median run by msgs/s (the lower
    middle one of an even count), with every run's numbers in ``rounds`` and their spread."""
    rated = [(rate, r) for r in records if r.status == "ok" and (rate := r.value("msgs_per_s"))]
    if not rated:
        return records[0]
    rated.sort(key=lambda pair: pair[0])
    median = rated[(len(rated) - 1) // 2][1]
    result = dict(median.result)
    if len(rated) > 1:
        rates = [rate for rate, _ in rated]
        half_range = (rates[-1] - rates[0]) / 2
        result["spread_pct"] = round(100 * half_range / statistics.median(rates), 1)
    combined = dataclasses.replace(median, result=result)
    combined.rounds = [
        {
            "topic": r.topic,
            "msgs_per_s": r.value("msgs_per_s"),
            "seconds": r.value("seconds"),
            "cpu_s": r.value("cpu_s"),
            "p50_ms": r.value("p50_ms"),
            "p99_ms": r.value("p99_ms"),
            "status": r.status,
            "reason": r.reason,
            "stderr_tail": r.stderr_tail,
        }
        for r in records
    ]
    return combined
