"""Benchmark a bundle: latency percentiles and throughput per model and batch size, against
PyTorch eager and against the GEMM floor of this CPU (model FLOPs ÷ measured sgemm rate).

Beside the GEMM floor, a roofline floor adds what FLOPs miss: at small batches a layer whose
weights are larger than its arithmetic (VGG16's 400 MB classifier at batch 1) is bound by
memory bandwidth. Per layer it takes max(FLOPs ÷ sgemm rate, weight bytes ÷ GEMV bandwidth),
the bandwidth measured with a numpy matrix-vector product over a matrix larger than the
last-level cache; weights that fit in that cache together are taken as free.

Modules: ``floors`` (sgemm rate, GEMV bandwidth, the timing loop), ``flops`` (FLOP counting),
``running`` (``benchmark_bundle``), ``table`` (what the CLI prints). torch is imported only for
the eager baseline, onnx only to count FLOPs.
"""

from onnx_pipeline.bench.floors import GemmRate, MemoryRate, measure_gemm_rate, measure_gemv_bandwidth, time_runs
from onnx_pipeline.bench.flops import FlopCount, count_flops
from onnx_pipeline.bench.running import MAX_BATCH, BenchConfig, BenchResult, BenchRow, benchmark_bundle
from onnx_pipeline.bench.table import bench_summary, bench_table

__all__ = [
    "MAX_BATCH",
    "BenchConfig",
    "BenchResult",
    "BenchRow",
    "FlopCount",
    "GemmRate",
    "MemoryRate",
    "bench_summary",
    "bench_table",
    "benchmark_bundle",
    "count_flops",
    "measure_gemm_rate",
    "measure_gemv_bandwidth",
    "time_runs",
]
