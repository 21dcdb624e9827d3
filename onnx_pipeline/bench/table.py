"""The bench result as a table and summary lines (the CLI prints them)."""

from __future__ import annotations

from onnx_pipeline.bench.running import BenchResult

BENCH_COLUMNS = (
    "backend",
    "model",
    "batch",
    "runs",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "images/s",
    "floor ms",
    "× floor",
    "× roofline",
    "vs eager",
    "vs fp32",
)


def bench_table(result: BenchResult) -> tuple[tuple[str, ...], list[list[str]]]:
    """The result as a header and rows of strings, ready for a rich ``Table`` (the CLI prints it)."""

    def opt(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    rows = [
        [
            row.backend,
            row.model,
            str(row.batch_size),
            str(row.runs),
            f"{row.p50_ms:.2f}",
            f"{row.p90_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"{row.throughput_ips:.1f}",
            opt(row.floor_ms, ".2f"),
            opt(row.vs_floor, ".2f") + ("×" if row.vs_floor is not None else ""),
            opt(row.vs_roofline, ".2f") + ("×" if row.vs_roofline is not None else ""),
            opt(row.speedup_vs_eager, ".2f") + ("×" if row.speedup_vs_eager is not None else ""),
            opt(row.speedup_vs_fp32, ".2f") + ("×" if row.speedup_vs_fp32 is not None else ""),
        ]
        for row in result.rows
    ]
    return BENCH_COLUMNS, rows


def bench_summary(result: BenchResult) -> list[str]:
    """A few lines to print under the table: the GEMM rate, FLOPs, floor, settings, what was skipped."""
    lines = [
        f"sgemm {result.gemm.size}³ float32 (numpy): {result.gemm.gflops:.1f} GFLOP/s (best of {result.gemm.repeats})",
    ]
    if result.memory is not None:
        llc = f"{result.memory.llc_bytes / 2**20:.0f} MiB" if result.memory.llc_bytes else "unknown"
        lines.append(
            f"GEMV over {result.memory.matrix_mbytes:.0f} MiB (numpy): {result.memory.gbytes_per_s:.1f} GB/s "
            f"weight streaming; last-level cache {llc}"
        )
    if result.flops is not None:
        lines.append(
            f"model: {result.flops.flops_per_image / 1e9:.3f} GFLOP per image, "
            f"{result.flops.weight_bytes / 2**20:.1f} MiB of weights (counted on {result.flops.source}); "
            "floor = FLOPs ÷ sgemm rate; roofline = Σ per layer max(FLOPs ÷ sgemm rate, weight bytes ÷ GEMV rate)"
        )
    lines.append(
        f"onnxruntime: graph optimization {result.session['graph_optimization_level']}, "
        f"intra-op threads {result.threads or 'auto'}; cpu: {result.environment.get('cpu', '?')}"
    )
    if result.gemm.env:
        lines.append("BLAS environment: " + ", ".join(f"{k}={v}" for k, v in result.gemm.env.items()))
    lines.extend(f"skipped {s.what}: {s.reason}" for s in result.skipped)
    return lines
