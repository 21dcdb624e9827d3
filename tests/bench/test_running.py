"""The benchmark library: timing, FLOP counting, the GEMM floor, comparisons and the table."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from onnx_pipeline.bench import (
    BenchConfig,
    BenchResult,
    FlopCount,
    GemmRate,
    MemoryRate,
    bench_summary,
    bench_table,
    benchmark_bundle,
    count_flops,
    measure_gemm_rate,
    measure_gemv_bandwidth,
    time_runs,
)
from onnx_pipeline.bench.table import BENCH_COLUMNS
from onnx_pipeline.errors import InputError
from onnx_pipeline.files import json_text
from tests.helpers import TINY_FLOPS, TINY_WEIGHT_BYTES, tiny_module

pytest.importorskip("onnx")

FAST = {
    "warmup_runs": 1,
    "min_runs": 3,
    "min_seconds": 0.0,
    "gemm_size": 256,
    "gemm_repeats": 1,
    "gemv_mbytes": 4,
    "threads": 1,
}


@pytest.fixture(scope="module")
def result(tiny_bundle_int8: Path) -> BenchResult:
    config = BenchConfig(batch_sizes=(1, 2), torch_model=tiny_module, **FAST)  # type: ignore[arg-type]
    return benchmark_bundle(tiny_bundle_int8, config)


def test_flops_match_a_hand_count(tiny_bundle_int8: Path) -> None:
    folder = tiny_bundle_int8
    fp32 = count_flops(folder / "model.onnx")
    assert fp32.flops_per_image == TINY_FLOPS
    convs = 2 * 8 * 3 * 9 * 64 * 64 + 2 * 8 * 8 * 9 * 64 * 64 + 2 * 16 * 8 * 9 * 32 * 32
    assert fp32.by_op == {"Conv": convs, "Gemm": 2 * 256 * 32 + 2 * 32 * 10}
    assert fp32.uncounted == ()
    assert fp32.weight_bytes == TINY_WEIGHT_BYTES
    int8 = count_flops(folder / "model.int8.onnx")
    assert int8.flops_per_image == TINY_FLOPS  # QDQ: same arithmetic
    assert int8.weight_bytes <= TINY_WEIGHT_BYTES // 4 + 64  # int8 weights (biases stay outside the count)


def test_roofline_adds_weight_streaming() -> None:
    count = FlopCount(flops_per_image=2_000, source="m", weight_bytes=3_000, layers=((1_000, 1_000), (1_000, 2_000)))
    gemm = GemmRate(size=64, repeats=1, best_seconds=1.0, gflops=1e-6)  # 1,000 FLOP/s
    memory = MemoryRate(matrix_mbytes=1.0, best_seconds=1.0, gbytes_per_s=1e-6, llc_bytes=None)  # 1,000 B/s
    # layer 1: max(1 s, 1 s); layer 2: max(1 s, 2 s) → 3 s at batch 1; batch 4: compute-bound 4 s + 4 s
    assert count.roofline_ms(1, gemm, memory) == pytest.approx(3_000.0)
    assert count.roofline_ms(4, gemm, memory) == pytest.approx(8_000.0)
    cached = MemoryRate(matrix_mbytes=1.0, best_seconds=1.0, gbytes_per_s=1e-6, llc_bytes=1 << 20)
    assert count.roofline_ms(1, gemm, cached) == pytest.approx(2_000.0)  # weights fit in the cache: free


def test_flops_through_fused_contrib_ops(tmp_path: Path, tiny_bundle: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    optimized = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(tiny_bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    count = count_flops(optimized)
    assert count.flops_per_image == TINY_FLOPS and count.uncounted == ()


def test_rows_are_sane(result: BenchResult) -> None:
    measured = {(r.backend, r.model, r.batch_size) for r in result.rows}
    kinds = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("torch-eager", "eager")]
    assert measured == {(backend, model, n) for backend, model in kinds for n in (1, 2)}
    for row in result.rows:
        assert row.runs >= 3
        assert 0 < row.min_ms <= row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.mean_ms > 0 and row.throughput_ips > 0
        assert row.floor_ms is not None and row.floor_ms > 0
        assert row.vs_floor == pytest.approx(row.p50_ms / row.floor_ms)
        assert row.roofline_ms is not None and row.roofline_ms >= row.floor_ms * (1 - 1e-9)
        assert row.speedup_vs_eager is not None and row.speedup_vs_eager > 0
    fp32 = result.row("onnxruntime", "fp32", 2)
    eager = result.row("torch-eager", "fp32", 2)
    assert fp32 is not None and eager is not None
    assert fp32.speedup_vs_fp32 == 1.0
    assert eager.speedup_vs_eager == 1.0 and eager.speedup_vs_fp32 is None
    assert fp32.providers == ("CPUExecutionProvider",)
    floor_b1 = result.row("onnxruntime", "fp32", 1)
    assert floor_b1 is not None and fp32.floor_ms == pytest.approx(2 * (floor_b1.floor_ms or 0))
    assert result.flops is not None and result.flops.flops_per_image == TINY_FLOPS
    assert result.gemm.gflops > 0 and result.threads == 1
    assert result.memory is not None and result.memory.gbytes_per_s > 0


def test_table_json_and_summary(result: BenchResult) -> None:
    header, rows = bench_table(result)
    assert header == BENCH_COLUMNS
    assert len(rows) == len(result.rows) and all(len(r) == len(header) for r in rows)
    assert all(isinstance(cell, str) for r in rows for cell in r)
    data = json.loads(json_text(result))
    assert data["rows"][0]["p50_ms"] > 0
    lines = bench_summary(result)
    assert any("GFLOP/s" in line for line in lines) and any("per image" in line for line in lines)


def test_without_torch_model_the_baseline_is_skipped(tiny_bundle_int8: Path, tiny_bundle: Path) -> None:
    config = BenchConfig(batch_sizes=(1,), models=("fp32",), **FAST)  # type: ignore[arg-type]
    result = benchmark_bundle(tiny_bundle_int8, config)
    assert [r.model for r in result.rows] == ["fp32"]
    assert any(s.what == "torch-eager" for s in result.skipped)
    with pytest.raises(InputError, match="no model"):
        benchmark_bundle(tiny_bundle, BenchConfig(models=("fp16",), **FAST))  # type: ignore[arg-type]


def test_time_runs_counts() -> None:
    calls = []
    times = time_runs(lambda: calls.append(1), warmup=2, min_runs=4, min_seconds=0.0, max_runs=10)
    assert len(times) == 4 and len(calls) == 6
    times = time_runs(lambda: None, warmup=0, min_runs=1, min_seconds=10.0, max_runs=7)
    assert len(times) == 7  # max_runs bounds a time-bound measurement


def test_gemm_and_gemv_rates() -> None:
    rate = measure_gemm_rate(128, 2)
    assert rate.gflops > 0 and math.isfinite(rate.gflops) and rate.size == 128
    memory = measure_gemv_bandwidth(2, repeats=1)
    assert memory.gbytes_per_s > 0 and memory.matrix_mbytes == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_sizes": ()},
        {"batch_sizes": (0,)},
        {"min_runs": 0},
        {"min_runs": 5, "max_runs": 2},
        {"threads": -1},
        {"gemv_mbytes": 0},
    ],
)
def test_config_is_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        BenchConfig(**kwargs)  # type: ignore[arg-type]


def test_flops_of_an_unsorted_graph_with_symbolic_value_info(tmp_path: Path, tiny_bundle_int8: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(tiny_bundle_int8 / "model.int8.onnx"))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))  # as onnxruntime's quantizer may leave it: not topological
    path = tmp_path / "unsorted.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(onnx.load_from_string(model.SerializeToString())), str(path))
    assert count_flops(path).flops_per_image == TINY_FLOPS


def test_a_tampered_bundle_is_not_benchmarked(tmp_path: Path, tiny_bundle: Path) -> None:
    from onnx_pipeline.errors import IntegrityError

    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    (folder / "README.md").write_text("changed\n")
    with pytest.raises(IntegrityError, match=r"README\.md does not match"):
        benchmark_bundle(folder, BenchConfig(**FAST))  # type: ignore[arg-type]
