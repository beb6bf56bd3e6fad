"""The results: JSON, a markdown table, the target ratios, and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from .catalog import SCENARIOS, TARGETS, Scenario
from .machine import summary
from .runner import Record

MODES_WITH_LATENCY = ("consume", "pubsub")


def _by_key(records: Sequence[Record]) -> dict[tuple[str, str, int], Record]:
    return {(r.scenario, r.impl, r.size): r for r in records}


def ratio(
    records: Sequence[Record], scenario: str, num: str, den: str, size: int
) -> Optional[float]:
    """msgs/s of ``num`` over msgs/s of ``den`` in ``scenario`` at ``size``, when both ran."""
    index = _by_key(records)
    a, b = index.get((scenario, num, size)), index.get((scenario, den, size))
    if not a or not b or a.status != "ok" or b.status != "ok":
        return None
    x, y = a.value("msgs_per_s"), b.value("msgs_per_s")
    return x / y if x and y else None


def targets(records: Sequence[Record]) -> list[dict[str, Any]]:
    out = []
    ran = {r.scenario for r in records}
    for t in TARGETS:
        if t.scenario not in ran:
            continue
        value = ratio(records, t.scenario, t.polybus, t.comparator, 100)
        out.append(
            {
                "scenario": t.scenario,
                "polybus": t.polybus,
                "comparator": t.comparator,
                "target": t.ratio,
                "ratio": round(value, 3) if value is not None else None,
                "met": None if value is None else value >= t.ratio,
            }
        )
    return out


def _num(value: Optional[float], digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _runs(record: Record) -> str:
    """How many runs the row's median comes from, and how far they spread around it."""
    if len(record.rounds) < 2:
        return "1"
    spread = record.value("spread_pct")
    return f"{len(record.rounds)} ±{spread:.0f}%" if spread is not None else str(len(record.rounds))


def _rounds_note(options: dict[str, Any]) -> str:
    count = options.get("rounds", 1)
    if count < 2:
        return "Each implementation ran once."
    return (
        f"Runs whose measured phase lasted under {options.get('repeat_below_s', 10):.0f} s ran"
        f" {count} times, in rounds interleaved with the other implementations of the same"
        " scenario and size; a row shows the median run (its msgs/s, latency, CPU and memory;"
        " the ratios come from it), `runs` how many there were and half their range as a share"
        " of the median."
    )


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def markdown(doc: dict[str, Any], records: Sequence[Record]) -> str:
    lines = [
        f"# Polybus benchmark, {doc['started']}",
        "",
        f"Machine: {summary(doc['machine'])}.",
        f"Messages per run: {doc['options']['messages']:,}, times the implementation's scale in"
        " the full suite, so that every run lasts seconds (the `messages` column); sizes: "
        + ", ".join(f"{s} B" for s in doc["options"]["sizes"])
        + (
            "; **smoke run** (tiny counts: the numbers mean nothing)"
            if doc["options"]["smoke"]
            else ""
        )
        + ".",
        "",
        "msgs/s: produce scenarios time publishing until the broker accepted every message;"
        " consume scenarios time draining a backlog, from the consumer being ready to its last"
        " message; pubsub times publishing and consuming at once. p50/p99: end-to-end latency"
        " (send to handler) of messages paced at a fixed rate, or for the pubsub ceiling under"
        " full load. CPU s and peak RSS cover the measured phase of the process (whole process"
        " for the brokers' own tools, marked *). Ratio: msgs/s of the Polybus implementation"
        " (bold: the scenario's main one; `vs` names the one compared) over this row's msgs/s.",
        "",
        _rounds_note(doc["options"]),
        "",
        "| scenario | size | implementation | messages | msgs/s | runs | p50 ms | p99 ms | CPU s"
        " | peak RSS MiB | idle RSS MiB | Polybus ÷ this | vs |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        s = _scenario(r.scenario)
        name = f"**{r.impl}**" if r.impl == s.primary else r.impl
        if r.status != "ok":
            reason = (r.reason or "failed").replace("|", "/")
            lines.append(f"| {r.scenario} | {r.size} | {name} | failed: {reason} ||||||||||")
            continue
        own = "cpu_s" in r.result
        star = "" if own else "*"
        latency = s.mode in MODES_WITH_LATENCY
        versus = "" if r.polybus else s.reference(s.impl(r.impl))
        rel = ratio(records, r.scenario, versus, r.impl, r.size) if versus else None
        lines.append(
            "| "
            + " | ".join(
                [
                    r.scenario,
                    str(r.size),
                    name,
                    _num(r.value("messages")),
                    _num(r.value("msgs_per_s")),
                    _runs(r),
                    _ms(r.value("p50_ms")) if latency else "–",
                    _ms(r.value("p99_ms")) if latency else "–",
                    _num(r.value("cpu_s"), 2) + star,
                    _num(r.value("peak_rss_mib"), 1) + star,
                    _num(r.value("idle_rss_mib"), 1),
                    f"{rel:.2f}×" if rel is not None else "",
                    versus,
                ]
            )
            + " |"
        )
    rows = doc.get("targets") or []
    if rows:
        lines += [
            "",
            "Targets of issue 9 (100-byte messages, same run):",
            "",
            "| scenario | Polybus | comparator | ratio | target | met |",
            "|---|---|---|---:|---:|:---:|",
        ]
        for t in rows:
            met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
            value = f"{t['ratio']:.2f}×" if t["ratio"] is not None else "–"
            lines.append(
                f"| {t['scenario']} | {t['polybus']} | {t['comparator']} | {value} |"
                f" ≥{t['target']}× | {met} |"
            )
    lines += ["", "How each implementation works:", ""]
    seen = set()
    for r in records:
        if (r.scenario, r.impl) in seen:
            continue
        seen.add((r.scenario, r.impl))
        s = _scenario(r.scenario)
        lines.append(f"- {r.scenario} / {r.impl}: {s.impl(r.impl).how}")
    return "\n".join(lines) + "\n"


def write(
    out_dir: Path, stem: str, doc: dict[str, Any], records: Sequence[Record]
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**doc, "runs": [asdict(r) for r in records], "targets": targets(records)}
    paths = {
        "json": out_dir / f"{stem}.json",
        "md": out_dir / f"{stem}.md",
        "throughput": out_dir / f"{stem}-throughput.png",
        "latency": out_dir / f"{stem}-latency.png",
    }
    paths["json"].write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    paths["md"].write_text(markdown(doc, records))
    plot(records, paths["throughput"], paths["latency"], doc)
    return paths


def plot(records: Sequence[Record], throughput: Path, latency: Path, doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ok = [r for r in records if r.status == "ok" and r.value("msgs_per_s")]
    scenarios = [s for s in SCENARIOS if any(r.scenario == s.name for r in ok)]
    sizes = sorted({r.size for r in ok}) or [100]
    colors = {100: "#4C72B0", 1024: "#DD8452"}
    subtitle = f"{doc['machine'].get('cpu')}, {doc['machine'].get('cores')} cores; {doc['started']}"

    def short(value: float) -> str:
        for scale, unit in ((1e6, "M"), (1e3, "k")):
            if round(value / scale, 2) >= 1:
                return f"{value / scale:.3g}{unit}"
        return f"{value:.3g}"

    def finish(ax: Any, values: list[float], title: str) -> None:
        """Log scale from a power of ten below the smallest bar, each bar labelled."""
        positive = [v for v in values if v > 0]
        if positive:
            low = 10 ** math.floor(math.log10(min(positive)))
            ax.set_xscale("log")
            ax.set_xlim(low, max(positive) * 3)
            ax.xaxis.set_minor_formatter(NullFormatter())
        for patch in ax.patches:
            width = patch.get_width()
            if width > 0:
                y = patch.get_y() + patch.get_height() / 2
                ax.text(width * 1.05, y, short(width), va="center", fontsize=6)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", which="major", alpha=0.3)

    def grid(count: int) -> tuple[Any, list[Any]]:
        cols = 2
        rows = max(1, math.ceil(count / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(14, 2.6 * rows + 1), squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax in flat[count:]:
            ax.axis("off")
        return fig, flat

    fig, axes = grid(max(1, len(scenarios)))
    for ax, s in zip(axes, scenarios, strict=False):
        impls = [
            i.name for i in s.impls if any(r.scenario == s.name and r.impl == i.name for r in ok)
        ]
        height = 0.8 / len(sizes)
        plotted: list[float] = []
        for k, size in enumerate(sizes):
            values = []
            for impl in impls:
                r = next(
                    (r for r in ok if (r.scenario, r.impl, r.size) == (s.name, impl, size)), None
                )
                values.append((r.value("msgs_per_s") or 0) if r else 0)
            ys = [y + k * height for y in range(len(impls))]
            ax.barh(ys, values, height=height, color=colors.get(size), label=f"{size} B")
            plotted += values
        ax.set_yticks([y + height * (len(sizes) - 1) / 2 for y in range(len(impls))])
        ax.set_yticklabels(impls, fontsize=8)
        for label, impl in zip(ax.get_yticklabels(), impls, strict=True):
            if s.impl(impl).polybus:
                label.set_fontweight("bold")
        finish(ax, plotted, s.name)
    if scenarios:
        axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Throughput, msgs/s (log scale; Polybus in bold)\n{subtitle}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(throughput, dpi=90)
    plt.close(fig)

    lat = [r for r in ok if r.value("p50_ms") is not None]
    lat_scenarios = [
        s
        for s in scenarios
        if s.mode in MODES_WITH_LATENCY and any(r.scenario == s.name for r in lat)
    ]
    fig, axes = grid(max(1, len(lat_scenarios)))
    for ax, s in zip(axes, lat_scenarios, strict=False):
        rows = [r for r in lat if r.scenario == s.name]
        labels = [f"{r.impl} {r.size}B" for r in rows]
        ys = list(range(len(rows)))
        ax.barh([y - 0.2 for y in ys], [r.value("p50_ms") or 0 for r in rows], 0.4, label="p50")
        ax.barh([y + 0.2 for y in ys], [r.value("p99_ms") or 0 for r in rows], 0.4, label="p99")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        for label, r in zip(ax.get_yticklabels(), rows, strict=True):
            if r.polybus:
                label.set_fontweight("bold")
        finish(
            ax, [v for r in rows for v in (r.value("p50_ms") or 0, r.value("p99_ms") or 0)], s.name
        )
    if lat_scenarios:
        axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"End-to-end latency, ms (log scale; Polybus in bold)\n{subtitle}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(latency, dpi=90)
    plt.close(fig)
