"""The report's figures, drawn with matplotlib (Agg, no pyplot state) and embedded as PNG data URIs.

Text from a manifest (output names, model files, layer names) is drawn as plain text: mathtext is
off (``text.parse_math``), so a ``$`` in a name is a dollar sign, never a formula to parse; long
names are shortened. No axis uses matplotlib's log scale (its tick labels are mathtext): log
quantities are plotted as their log10 with tick labels written here.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

DPI = 100
PASS_COLOUR, FAIL_COLOUR, NEUTRAL = "#1f8a4c", "#c0392b", "#4c72b0"
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")
_RC: dict[Any, Any] = {
    "text.parse_math": False,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "onnx-pipeline",
}


def short(name: str, width: int = 38) -> str:
    """``name`` shortened to ``width`` characters (the middle elided: layer paths differ at both ends)."""
    name = " ".join(name.split())
    if len(name) <= width:
        return name
    keep = (width - 1) // 2
    return name[:keep] + "…" + name[-(width - 1 - keep) :]


@contextmanager
def figure(width: float, height: float, rows: int = 1, cols: int = 1) -> Iterator[tuple[Any, Any]]:
    """A matplotlib Figure (constrained layout) and its axes, under the report's rc settings."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        yield fig, axes


def to_uri(fig: Any) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _power_label(value: float, _pos: Any = None) -> str:
    """A log10 tick as ``1e-05`` (plain text: no mathtext)."""
    return f"1e{value:+.0f}".replace("+", "") if float(value).is_integer() else ""


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Histogram:
    """One output's error histograms: log10 bin edges, counts per sample set, and reference lines."""

    output: str
    edges_log10: Sequence[float]
    sets: Mapping[str, tuple[Sequence[int], int, int]]  # name -> (counts, zeros, elements)
    #: vertical lines: (absolute error, label)
    lines: Sequence[tuple[float, str]] = ()


def error_histogram(hist: Histogram) -> str:
    """Fraction of elements per |error| bin, one stepped line per sample set, with the reference lines."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    with figure(10.0, 3.2) as (fig, axes):
        ax = axes[0][0]
        for index, (name, (counts, zeros, elements)) in enumerate(hist.sets.items()):
            total = max(elements, 1)
            label = f"{short(name, 24)} ({elements:,} values" + (f", {zeros:,} exact)" if zeros else ")")
            ax.stairs([c / total for c in counts], hist.edges_log10, label=label, color=PALETTE[index % 8], lw=1.6)
        for index, (value, label) in enumerate(hist.lines):
            if value > 0 and math.isfinite(value):
                style = ("--", ":", "-.")[index % 3]
                ax.axvline(math.log10(value), color="#333333", ls=style, lw=1.2, label=f"{label} ({value:.3g})")
        ax.xaxis.set_major_locator(MultipleLocator(1.0))
        ax.xaxis.set_major_formatter(FuncFormatter(_power_label))
        ax.set_xlabel("|ONNX − PyTorch| (log scale)")
        ax.set_ylabel("fraction of values")
        ax.set_title(f"output {short(hist.output, 60)}: absolute error per sample set")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return to_uri(fig)


def timings(stages: Mapping[str, float], title: str) -> str:
    """Seconds per stage, longest first, as horizontal bars."""
    ordered = sorted(stages.items(), key=lambda kv: kv[1], reverse=True)[:30]
    with figure(9.0, 0.8 + 0.28 * len(ordered)) as (fig, axes):
        ax = axes[0][0]
        names = [short(k, 40) for k, _ in ordered][::-1]
        values = [v for _, v in ordered][::-1]
        bars = ax.barh(range(len(values)), values, color=NEUTRAL)
        ax.set_yticks(range(len(values)), names)
        ax.bar_label(bars, labels=[f"{v:.2f} s" for v in values], padding=3, fontsize=8)
        ax.set_xlabel("seconds")
        ax.set_title(title)
        ax.margins(x=0.12)
        return to_uri(fig)


# --------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class Metric:
    """One fidelity figure of one model, with its threshold (None: not measured or no threshold)."""

    value: float | None
    threshold: float | None


def fidelity(models: Sequence[str], metrics: Mapping[str, Sequence[Metric]]) -> str:
    """One panel per figure: each model's value (green: meets its threshold, red: not), its threshold a bar."""
    names = list(metrics)
    with figure(9.0, 2.9, 1, len(names)) as (fig, axes):
        for ax, name in zip(axes[0], names, strict=True):
            _fidelity_panel(ax, name, models, metrics[name])
        return to_uri(fig)


def _fidelity_panel(ax: Any, name: str, models: Sequence[str], values: Sequence[Metric]) -> None:
    shown = [v.value for v in values if v.value is not None and math.isfinite(v.value)]
    shown += [v.threshold for v in values if v.threshold is not None]
    low, high = (min(shown), max(shown)) if shown else (0.0, 1.0)
    pad = max((high - low) * 0.15, abs(high) * 1e-4, 1e-6)
    ax.set_ylim(low - pad, high + pad)
    for x, metric in enumerate(values):
        if metric.threshold is not None:
            ax.hlines(metric.threshold, x - 0.35, x + 0.35, color="#333333", lw=2)
        if metric.value is None:
            ax.annotate("n/a", (x, low), ha="center", fontsize=8, color="#6b7280")
            continue
        value = metric.value if math.isfinite(metric.value) else high + pad * 0.5
        good = metric.threshold is None or metric.value >= metric.threshold
        ax.plot([x, x], [low - pad, value], color=PASS_COLOUR if good else FAIL_COLOUR, lw=3, alpha=0.35)
        ax.plot([x], [value], "o", color=PASS_COLOUR if good else FAIL_COLOUR, ms=7)
        if not math.isfinite(metric.value):
            ax.annotate("∞", (x, value), textcoords="offset points", xytext=(6, -3), fontsize=9)
    ax.set_xticks(range(len(models)), [short(m, 16) for m in models], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.set_title(name, fontsize=9)


def ranked_bars(rows: Sequence[tuple[str, float, bool]], xlabel: str, title: str) -> str:
    """Horizontal bars, first row on top; rows whose flag is set are drawn in the warning colour."""
    rows = list(rows)[:30]
    with figure(9.0, 0.9 + 0.26 * len(rows)) as (fig, axes):
        ax = axes[0][0]
        ax.barh(
            range(len(rows)),
            [r[1] for r in rows][::-1],
            color=[FAIL_COLOUR if r[2] else NEUTRAL for r in rows][::-1],
        )
        ax.set_yticks(range(len(rows)), [short(r[0], 48) for r in rows][::-1], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        return to_uri(fig)


def placement_strip(devices: Sequence[str], title: str) -> str:
    """Where each node runs, in graph order: one coloured cell per node (DPU blue, CPU red)."""
    from matplotlib.patches import Patch

    colours = {"DPU": NEUTRAL, "CPU": FAIL_COLOUR}
    with figure(9.0, 1.3) as (fig, axes):
        ax = axes[0][0]
        ax.bar(range(len(devices)), [1] * len(devices), width=1.0, color=[colours.get(d, "#8c8c8c") for d in devices])
        ax.set_yticks([])
        ax.set_xlim(-0.5, len(devices) - 0.5)
        ax.set_xlabel("node, in graph order")
        ax.spines["left"].set_visible(False)
        ax.set_title(title)
        ax.legend(handles=[Patch(color=c, label=d) for d, c in colours.items()], loc="upper right", ncols=2,
                  fontsize=8, frameon=False, bbox_to_anchor=(1.0, 1.45))  # fmt: skip
        return to_uri(fig)


@dataclass(frozen=True)
class Latency:
    """One bench row: what ran, at which batch size, its percentiles and the floors it is compared with."""

    label: str
    batch: int
    p50: float
    p90: float
    p99: float
    floor: float | None = None
    roofline: float | None = None


def latency(rows: Sequence[Latency]) -> str:
    """Per batch size: p50 bars with p90/p99 whiskers per model, the GEMM floor and roofline marked."""
    batches = sorted({r.batch for r in rows})
    with figure(9.0, 3.2, 1, len(batches)) as (fig, axes):
        for ax, batch in zip(axes[0], batches, strict=True):
            chosen = [r for r in rows if r.batch == batch]
            xs = range(len(chosen))
            ax.bar(xs, [r.p50 for r in chosen], color=[PALETTE[i % 8] for i in xs], alpha=0.85, label="p50")
            ax.vlines(xs, [r.p50 for r in chosen], [r.p99 for r in chosen], color="#333333", lw=1.2)
            ax.plot(xs, [r.p90 for r in chosen], "_", color="#333333", ms=10, label="p90")
            ax.plot(xs, [r.p99 for r in chosen], "v", color="#333333", ms=5, label="p99")
            floors = [(x, r.floor) for x, r in zip(xs, chosen, strict=True) if r.floor is not None]
            roofs = [(x, r.roofline) for x, r in zip(xs, chosen, strict=True) if r.roofline is not None]
            if floors:
                ax.plot(*zip(*floors, strict=True), "D", color=FAIL_COLOUR, ms=6, label="GEMM floor")
            if roofs:
                ax.plot(*zip(*roofs, strict=True), "s", color="#8172b3", ms=5, label="roofline floor")
            ax.set_xticks(list(xs), [short(r.label, 18) for r in chosen], rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("ms per batch")
            ax.set_title(f"batch {batch}")
        axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return to_uri(fig)
