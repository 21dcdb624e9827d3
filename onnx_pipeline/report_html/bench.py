"""Bench results in a report: a bench JSON (``onnx-pipeline bench BUNDLE --json > bench.json``) read back.

A bundle is hashed and immutable, so bench never writes into it; ``onnx-pipeline report BUNDLE
--bench bench.json`` draws the measurements into ``report.html`` (which is not among the hashed files).
The JSON is untrusted input like a manifest: read with a size limit and field by field, and a file
that is not a bench result is refused with one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_pipeline.bench.table import BENCH_COLUMNS
from onnx_pipeline.errors import InputError
from onnx_pipeline.report_html import plots
from onnx_pipeline.report_html.data import finite, integer, items, obj, text
from onnx_pipeline.report_html.html import Html, facts, fmt, image, note, section, table, tag

MAX_BYTES = 16 << 20
HOW = "run onnx-pipeline bench BUNDLE --json > bench.json, then onnx-pipeline report BUNDLE --bench bench.json"


@dataclass(frozen=True)
class BenchRow:
    """One measured row of a bench JSON."""

    backend: str
    model: str
    batch: int
    runs: int
    p50: float
    p90: float
    p99: float
    throughput: float | None
    floor: float | None
    roofline: float | None


@dataclass(frozen=True)
class BenchData:
    """What the report shows of a bench result."""

    source: str
    bundle: str
    rows: tuple[BenchRow, ...]
    facts: tuple[tuple[str, str], ...]
    skipped: tuple[tuple[str, str], ...]


def load_bench(path: Path | str) -> BenchData:
    """Read and check a bench JSON; ``InputError`` when it is missing, too large or not a bench result."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputError(f"{path} is larger than {MAX_BYTES >> 20} MiB: not a bench result")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"cannot read the bench result {path} ({type(exc).__name__}): {HOW}") from None
    rows = [_row(r) for r in items(obj(data).get("rows"))]
    if not rows or any(r is None for r in rows):
        raise InputError(f"{path} is not a bench result with rows of backend, model, batch and percentiles: {HOW}")
    gemm, flops = obj(data.get("gemm")), obj(data.get("flops"))
    details = [
        ("bundle measured", text(data.get("bundle"), "?")),
        ("cpu", text(obj(data.get("environment")).get("cpu"), "?")),
        ("intra-op threads", text(data.get("threads"), "?")),
        ("sgemm rate", f"{fmt(finite(gemm.get('gflops')), 4)} GFLOP/s (numpy)"),
    ]
    if finite(flops.get("flops_per_image")) is not None:
        details.append(("FLOPs per image", f"{fmt((finite(flops.get('flops_per_image')) or 0) / 1e9, 4)} GFLOP"))
    skipped = tuple((text(obj(s).get("what")), text(obj(s).get("reason"))) for s in items(data.get("skipped")))
    return BenchData(str(path), text(data.get("bundle")), tuple(r for r in rows if r), tuple(details), skipped)


def _row(value: Any) -> BenchRow | None:
    row = obj(value)
    batch, runs = integer(row.get("batch_size")), integer(row.get("runs"))
    p50, p90, p99 = (finite(row.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms"))
    if batch is None or batch < 1 or p50 is None or p90 is None or p99 is None or not text(row.get("backend")):
        return None
    return BenchRow(
        backend=text(row.get("backend")),
        model=text(row.get("model"), "?"),
        batch=batch,
        runs=runs or 0,
        p50=p50,
        p90=p90,
        p99=p99,
        throughput=finite(row.get("throughput_ips")),
        floor=finite(row.get("floor_ms")),
        roofline=finite(row.get("roofline_ms")),
    )


def bench_section(bench: BenchData | None, folder: Path) -> Html:
    """Latency percentiles per batch size against the GEMM floor and roofline; how to add them when absent."""
    title = "Benchmark"
    if bench is None:
        return section("bench", title, note(f"not measured: {HOW}"))
    body: list[Any] = [facts([("bench result", bench.source), *bench.facts])]
    if Path(bench.bundle).name and Path(bench.bundle).name != folder.name:
        body.append(note(f"measured on {bench.bundle}, which is not named like this folder ({folder.name})"))
    latencies = [
        plots.Latency(f"{r.model} ({r.backend})", r.batch, r.p50, r.p90, r.p99, r.floor, r.roofline) for r in bench.rows
    ]
    body.append(image(plots.latency(latencies), "latency percentiles per batch size"))
    headers = BENCH_COLUMNS[:11]  # up to × roofline: the comparisons are plotted beside
    rows = [
        [
            r.backend,
            r.model,
            str(r.batch),
            str(r.runs),
            f"{r.p50:.2f}",
            f"{r.p90:.2f}",
            f"{r.p99:.2f}",
            fmt(r.throughput, 4),
            fmt(r.floor, 4),
            f"{r.p50 / r.floor:.2f}×" if r.floor else "–",
            f"{r.p50 / r.roofline:.2f}×" if r.roofline else "–",
        ]
        for r in bench.rows
    ]
    body.append(table(headers, rows, numeric=range(2, 11)))
    if bench.skipped:
        body.append(tag("ul", *(tag("li", f"skipped {what}: {why}") for what, why in bench.skipped)))
    return section("bench", title, *body)
