"""The floors bench compares against: this CPU's sgemm rate and its weight-streaming (GEMV) bandwidth,
measured with numpy; and the timing loop every measurement uses."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: environment variables that change BLAS and thread behaviour, recorded with every result
ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_VERBOSE",
    "MKL_NUM_THREADS",
    "MKL_ENABLE_INSTRUCTIONS",
)


@dataclass(frozen=True)
class GemmRate:
    """The measured float32 matrix-multiply rate of numpy's BLAS: the CPU's practical peak."""

    size: int
    repeats: int
    best_seconds: float
    gflops: float
    blas: tuple[dict[str, Any], ...] = ()
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryRate:
    """The measured weight-streaming rate: bytes of a float32 matrix ÷ best time of a numpy GEMV over it."""

    matrix_mbytes: float
    best_seconds: float
    gbytes_per_s: float
    llc_bytes: int | None


def time_runs(fn: Callable[[], Any], *, warmup: int, min_runs: int, min_seconds: float, max_runs: int) -> np.ndarray:
    """Call ``fn`` ``warmup`` times untimed, then time it until both ``min_runs`` and ``min_seconds`` are met."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times, dtype=np.float64)


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` timed calls, after one untimed call."""
    return float(time_runs(fn, warmup=1, min_runs=repeats, min_seconds=0.0, max_runs=repeats).min())


def measure_gemm_rate(size: int = 2048, repeats: int = 3) -> GemmRate:
    """Best-of-``repeats`` GFLOP/s of a ``size``³ float32 numpy matmul (after one untimed run).

    BLAS environment variables (``OPENBLAS_CORETYPE`` ...) are left as they are and recorded,
    with threadpoolctl's view of the BLAS libraries when it is installed.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    best = _best_of(lambda: np.matmul(a, b, out=out), repeats)
    gflops = 2.0 * size**3 / best / 1e9
    return GemmRate(size, repeats, best, gflops, _blas_info(), {k: os.environ[k] for k in ENV_VARS if k in os.environ})


def last_level_cache_bytes() -> int | None:
    """Size of this CPU's last-level cache from Linux sysfs, or ``None`` where it cannot be read."""
    best: tuple[int, int] | None = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit() and (best is None or level > best[0]):
            best = (level, int(digits) * factor)
    return best[1] if best else None


def measure_gemv_bandwidth(mbytes: int | None = None, repeats: int = 3) -> MemoryRate:
    """Best-of-``repeats`` GB/s of a numpy float32 GEMV (1×K @ K×N) over a ``mbytes`` matrix.

    By default the matrix is twice the last-level cache (64 MiB to 1 GiB), so it streams from memory.
    """
    llc = last_level_cache_bytes()
    if mbytes is None:
        mbytes = min(max(2 * (llc or 0) >> 20, 64), 1024)
    cols = 4096
    rows = max(1, (mbytes << 20) // (4 * cols))
    matrix = np.ones((rows, cols), dtype=np.float32)
    vector = np.ones((1, rows), dtype=np.float32)
    out = np.empty((1, cols), dtype=np.float32)
    best = _best_of(lambda: np.matmul(vector, matrix, out=out), repeats)
    return MemoryRate(matrix.nbytes / 2**20, best, matrix.nbytes / best / 1e9, llc)


def _blas_info() -> tuple[dict[str, Any], ...]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ()
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture")
    return tuple({k: v for k, v in info.items() if k in keep} for info in threadpool_info())


#: onnxruntime's fused CPU ops (offline "extended" optimization) → the standard op and its attributes
