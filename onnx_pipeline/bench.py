"""Benchmark a bundle: latency percentiles and throughput per model and batch size, against
PyTorch eager and against the GEMM floor of this CPU (model FLOPs ÷ measured sgemm rate).

Beside the GEMM floor, a roofline floor adds what FLOPs miss: at small batches a layer whose
weights are larger than its arithmetic (VGG16's 400 MB classifier at batch 1) is bound by
memory bandwidth. Per layer it takes max(FLOPs ÷ sgemm rate, weight bytes ÷ GEMV bandwidth),
the bandwidth measured with a numpy matrix-vector product over a matrix larger than the
last-level cache; weights that fit in that cache together are taken as free.

torch is imported only inside ``_bench_eager``; onnx only inside ``count_flops``.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.errors import BundleError, InputError
from onnx_pipeline.files import to_jsonable
from onnx_pipeline.manifest import MANIFEST, BundleManifest, ModelRecord, RunManifest, read_manifest
from onnx_pipeline.runtime.bundle import Bundle, model_entries
from onnx_pipeline.runtime.session import SessionSettings

logger = logging.getLogger(__name__)

#: the largest batch size bench takes (memory is checked against the model's sizes too, see _check_memory)
MAX_BATCH = 4096

_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_VERBOSE",
    "MKL_NUM_THREADS",
    "MKL_ENABLE_INSTRUCTIONS",
)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how long.

    Each measurement runs ``warmup_runs`` untimed, then at least ``min_runs`` timed runs and
    keeps going until ``min_seconds`` have passed (at most ``max_runs``). ``threads = 0`` uses
    the manifest's session settings (onnxruntime then picks one thread per physical core);
    otherwise it sets onnxruntime's ``intra_op_num_threads`` and torch's ``set_num_threads``.
    ``models`` filters by precision or file name (``None``: every model of the bundle).
    ``torch_model`` is the eager baseline: an ``nn.Module`` or a zero-argument callable that
    builds one (the model source registry's builder); without it the baseline is skipped.
    """

    batch_sizes: tuple[int, ...] = (1, 8)
    warmup_runs: int = 2
    min_runs: int = 5
    min_seconds: float = 3.0
    max_runs: int = 1000
    threads: int = 0
    models: tuple[str, ...] | None = None
    providers: tuple[str, ...] | None = None
    session: SessionSettings | None = None
    torch_model: Any = None
    eager: bool = True
    gemm_size: int = 2048
    gemm_repeats: int = 3
    gemv_mbytes: int | None = None
    seed: int = 0
    verify: bool = True
    #: what was already known not to be measurable, as (what, why) pairs (e.g. the eager baseline refused)
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch_sizes
        ):
            raise InputError(f"batch sizes must be positive integers, not {list(self.batch_sizes)}")
        if any(b > MAX_BATCH for b in self.batch_sizes):
            raise InputError(f"batch sizes above {MAX_BATCH} are refused, got {max(self.batch_sizes)}")
        if not all(math.isfinite(v) for v in (self.min_seconds, float(self.threads))) or self.min_seconds > 3600:
            raise InputError(f"--seconds must be a finite number of seconds up to 3600, got {self.min_seconds}")
        if self.min_runs < 1 or self.max_runs < self.min_runs:
            raise InputError(f"need 1 <= min_runs <= max_runs, not {self.min_runs} and {self.max_runs}")
        if self.warmup_runs < 0 or self.min_seconds < 0 or self.threads < 0:
            raise InputError("warmup_runs, min_seconds and threads must not be negative")
        if self.gemm_size < 64 or self.gemm_repeats < 1:
            raise InputError("gemm_size must be >= 64 and gemm_repeats >= 1")
        if self.gemv_mbytes is not None and self.gemv_mbytes < 1:
            raise InputError("gemv_mbytes must be at least 1 (None: twice the last-level cache)")


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


@dataclass(frozen=True)
class FlopCount:
    """Multiply-adds ×2 of the Conv/Gemm/MatMul nodes of a model, per image, and their weight bytes.

    ``layers`` holds ``(flops per image, weight bytes)`` per counted node, for the roofline.
    """

    flops_per_image: int
    source: str
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()
    weight_bytes: int = 0
    layers: tuple[tuple[int, int], ...] = ()

    def roofline_ms(self, batch: int, gemm: GemmRate, memory: MemoryRate | None) -> float:
        """Σ per layer of max(compute time, weight streaming time) for one batch, in ms."""
        compute = 1.0 / (gemm.gflops * 1e9)
        cached = memory is None or (memory.llc_bytes is not None and self.weight_bytes <= memory.llc_bytes)
        stream = 0.0 if cached or memory is None else 1.0 / (memory.gbytes_per_s * 1e9)
        return 1000.0 * sum(max(flops * batch * compute, nbytes * stream) for flops, nbytes in self.layers)


@dataclass(frozen=True)
class BenchRow:
    """One measurement: a backend and model at one batch size, with its comparisons."""

    backend: str
    model: str
    precision: str
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput_ips: float
    providers: tuple[str, ...] = ()
    floor_ms: float | None = None
    vs_floor: float | None = None
    roofline_ms: float | None = None
    vs_roofline: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_fp32: float | None = None


@dataclass(frozen=True)
class BenchResult:
    """Every measurement of one ``benchmark_bundle`` call, with the floor, settings and what was skipped."""

    bundle: str
    rows: tuple[BenchRow, ...]
    gemm: GemmRate
    flops: FlopCount | None
    threads: int
    session: dict[str, Any]
    skipped: tuple[tuple[str, str], ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    memory: MemoryRate | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json``)."""
        data = asdict(self)
        data["skipped"] = [{"what": what, "reason": why} for what, why in self.skipped]
        if data["flops"] is not None:
            data["flops"].pop("layers")  # per-node detail: long, and only an input of the roofline
        return data

    def row(self, backend: str, precision: str, batch_size: int) -> BenchRow | None:
        """The first row for this backend, precision and batch size, if measured."""
        for candidate in self.rows:
            if (candidate.backend, candidate.precision, candidate.batch_size) == (backend, precision, batch_size):
                return candidate
        return None


# --------------------------------------------------------------------------- timing
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


def _row(backend: str, entry_label: str, precision: str, batch: int, seconds: np.ndarray, **extra: Any) -> BenchRow:
    ms = seconds * 1000.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return BenchRow(
        backend=backend,
        model=entry_label,
        precision=precision,
        batch_size=batch,
        runs=len(seconds),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        min_ms=float(ms.min()),
        throughput_ips=batch * 1000.0 / mean,
        **extra,
    )


# --------------------------------------------------------------------------- floor
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
    return GemmRate(size, repeats, best, gflops, _blas_info(), {k: os.environ[k] for k in _ENV_VARS if k in os.environ})


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
_CONTRIB_AS_STANDARD: dict[str, tuple[str, tuple[str, ...]]] = {
    "FusedConv": ("Conv", ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")),
    "FusedGemm": ("Gemm", ("alpha", "beta", "transA", "transB")),
    "FusedMatMul": ("MatMul", ()),
}


def count_flops(model_path: Path) -> FlopCount:
    """Count 2·MACs per image of Conv (incl. ConvInteger, QLinearConv, FusedConv), Gemm and MatMul nodes.

    Conv: 2·Cout·Cin/groups·kh·kw·Hout·Wout; Gemm/MatMul: 2·M·N·K; shapes from onnx shape
    inference with the batch fixed to 1. Weights are not loaded. onnxruntime's fused contrib
    ops are renamed to their standard form first so that shape inference sees through them.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    for graph_input in graph.input:
        if graph_input.name in initializer_names:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    # onnxruntime's quantizer appends Q/DQ nodes out of order; shape inference needs topological order.
    ordered = _ordered(list(graph.node))
    del graph.node[:]
    graph.node.extend(ordered)
    # Shapes recorded with a symbolic batch (e.g. by quant_pre_process) would win over inferred ones: drop them.
    del graph.value_info[:]
    for graph_output in graph.output:
        for dim in graph_output.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
    for node in graph.node:
        if node.domain == "com.microsoft" and node.op_type in _CONTRIB_AS_STANDARD:
            standard, allowed = _CONTRIB_AS_STANDARD[node.op_type]
            node.op_type, node.domain = standard, ""
            kept = [a for a in node.attribute if a.name in allowed]
            del node.attribute[:]
            node.attribute.extend(kept)
            del node.input[3 if standard != "MatMul" else 2 :]  # FusedConv's optional Z (sum) input
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several untyped errors
        raise BundleError(f"onnx shape inference failed on {model_path.name}: {exc}") from exc
    shapes: dict[str, list[int | None]] = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weight_sizes: dict[str, int] = {}
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        weight_sizes[init.name] = int(np.prod(init.dims, dtype=np.int64)) * itemsize
    # a QDQ model's weights reach Conv/MatMul through DequantizeLinear (or a Cast/Transpose): follow it
    for node in inferred.graph.node:
        if node.op_type in ("DequantizeLinear", "Cast", "Transpose", "Identity") and node.input[0] in weight_sizes:
            weight_sizes.setdefault(node.output[0], weight_sizes[node.input[0]])
    for node in inferred.graph.node:  # Constant weights (some exporters emit them)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)

    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    layers: list[tuple[int, int]] = []
    for node in inferred.graph.node:
        flops = _node_flops(node, shapes)
        if flops is None:
            if node.op_type in _COUNTED_OPS:
                uncounted.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
        weight = node.input[3] if node.op_type in ("QLinearConv", "QLinearMatMul") else node.input[1]
        layers.append((flops, weight_sizes.get(weight, 0)))
    return FlopCount(
        flops_per_image=sum(by_op.values()),
        source=model_path.name,
        by_op=by_op,
        uncounted=tuple(uncounted),
        weight_bytes=sum(nbytes for _, nbytes in layers),
        layers=tuple(layers),
    )


def _ordered(nodes: list[Any]) -> list[Any]:
    """Nodes with producers first (the stored order where the graph has a cycle)."""
    from onnx_pipeline.onnxfile import topological_order

    try:
        return topological_order(nodes, set())
    except ValueError:
        return nodes


_COUNTED_OPS = ("Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")


def _known(shape: list[int | None] | None) -> list[int] | None:
    if not shape:
        return None
    known = [d for d in shape if d is not None and d > 0]
    return known if len(known) == len(shape) else None


def _node_flops(node: Any, shapes: dict[str, list[int | None]]) -> int | None:
    op = node.op_type
    if op not in _COUNTED_OPS:
        return None
    if op in ("Conv", "ConvInteger"):
        w_name, a_name = node.input[1], node.input[0]
    elif op == "QLinearConv":
        w_name, a_name = node.input[3], node.input[0]
    elif op == "QLinearMatMul":
        a_name, w_name = node.input[0], node.input[3]
    else:
        a_name, w_name = node.input[0], node.input[1]
    out = _known(shapes.get(node.output[0]))
    weight = _known(shapes.get(w_name))
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        if out is None or weight is None or len(weight) < 3:
            return None
        cout, cin_per_group = weight[0], weight[1]  # the weight is (Cout, Cin/groups, kh, kw)
        return 2 * cout * cin_per_group * int(np.prod(weight[2:])) * int(np.prod(out[2:])) * out[0]
    a = _known(shapes.get(a_name))
    if op == "Gemm":
        if weight is None or a is None:
            return None
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
        trans_b = next((x.i for x in node.attribute if x.name == "transB"), 0)
        n = weight[0] if trans_b else weight[1]
        return 2 * m * n * k
    # MatMul family: out (..., M, N), K from A's last dim
    if out is None or a is None:
        return None
    return 2 * int(np.prod(out)) * a[-1]


# --------------------------------------------------------------------------- bench
def benchmark_bundle(bundle_dir: Path | str, config: BenchConfig | None = None) -> BenchResult:
    """Measure every (selected) model of a bundle or run folder at each batch size, plus the eager baseline.

    The bundle's hashes are checked once. A model that cannot run here (e.g. fp16 without a
    kernel on this CPU) or a batch size a static-batch model cannot take is recorded in
    ``skipped`` with the reason, not raised.
    """
    config = config or BenchConfig()
    root = Path(bundle_dir)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    manifest = read_manifest(root, check=config.verify)
    skipped: list[tuple[str, str]] = list(config.skipped)

    all_entries = model_entries(manifest)
    entries = [e for e in all_entries if _selected(e, config.models)]
    if not entries:
        raise InputError(f"no model of {root} matches {list(config.models or ())}: choose from {_names(all_entries)}")
    settings = _settings(config, manifest)

    rng = np.random.default_rng(config.seed)
    rows: list[BenchRow] = []
    inputs: dict[int, np.ndarray] = {}
    first: Bundle | None = None
    for entry in entries:
        try:
            bundle = Bundle.load(root, providers=config.providers, model=entry.file, verify=False, settings=settings)
        except BundleError as exc:
            skipped.append((entry.label, f"cannot load here: {exc}"))
            continue
        first = first or bundle
        for batch in config.batch_sizes:
            if bundle.static_batch and bundle.static_batch != batch:
                skipped.append(
                    (f"{entry.label} batch {batch}", f"the model has a static batch of {bundle.static_batch}")
                )
                continue
            data = inputs.setdefault(batch, _random_input(bundle, batch, rng))
            logger.info("timing %s batch %d", entry.file, batch)
            try:
                seconds = _time(lambda b=bundle, d=data: b.run(d), config)  # type: ignore[misc]
            except InputError as exc:
                skipped.append((f"{entry.label} batch {batch}", str(exc)))
                continue
            rows.append(_row("onnxruntime", entry.label, entry.precision, batch, seconds, providers=bundle.providers))

    if first is None:
        raise BundleError(f"no model of {root} can be loaded here: " + "; ".join(why for _, why in skipped))
    if config.eager and config.torch_model is not None:
        try:
            for batch in config.batch_sizes:
                data = inputs.setdefault(batch, _random_input(first, batch, rng))
                seconds = _bench_eager(config.torch_model, data, config)
                rows.append(_row("torch-eager", "eager", "fp32", batch, seconds))
        except ImportError as exc:
            skipped.append(("torch-eager", f"torch is not importable: {exc}"))
    elif config.eager:
        skipped.append(("torch-eager", "no torch_model given to rebuild the PyTorch model"))

    gemm = measure_gemm_rate(config.gemm_size, config.gemm_repeats)
    memory = measure_gemv_bandwidth(config.gemv_mbytes)
    flops = _count_bundle_flops(manifest, all_entries, skipped)
    per_model = _count_per_model(manifest, entries, flops)
    rows = _compare(rows, flops, per_model, gemm, memory)
    threads = settings.intra_op_num_threads
    return BenchResult(
        bundle=str(root),
        rows=tuple(rows),
        gemm=gemm,
        flops=flops,
        threads=threads,
        session=to_jsonable(settings),
        skipped=tuple(skipped),
        environment=_environment(),
        memory=memory,
    )


def _settings(config: BenchConfig, manifest: RunManifest | BundleManifest) -> SessionSettings:
    recorded = manifest.session_options if isinstance(manifest, BundleManifest) else None
    settings = config.session or SessionSettings.from_dict(recorded)
    if config.threads:
        settings = replace(settings, intra_op_num_threads=config.threads)
    return settings


def _selected(entry: ModelRecord, wanted: tuple[str, ...] | None) -> bool:
    if wanted is None:
        return True
    names = {entry.precision, entry.file, Path(entry.file).name, entry.label, entry.format, entry.kind}
    return bool(names & set(wanted))


def _names(entries: Sequence[ModelRecord]) -> list[str]:
    return sorted({e.precision for e in entries} | {e.file for e in entries})


def _random_input(bundle: Bundle, batch: int, rng: np.random.Generator) -> np.ndarray:
    dims: list[int] = [batch]
    spec = bundle.preprocessing
    fallback = list((spec.channels, *spec.crop)) if spec else []
    for index, dim in enumerate(bundle.input_shape[1:]):
        if isinstance(dim, int) and dim > 0:
            dims.append(dim)
        elif index < len(fallback):
            dims.append(fallback[index])
        else:
            raise InputError(
                f"cannot tell dimension {index + 1} of {bundle.model.file}'s input: it has no preprocessing"
            )
    return rng.standard_normal(dims, dtype=np.float32)


def _time(fn: Callable[[], Any], config: BenchConfig) -> np.ndarray:
    return time_runs(
        fn,
        warmup=config.warmup_runs,
        min_runs=config.min_runs,
        min_seconds=config.min_seconds,
        max_runs=config.max_runs,
    )


def _bench_eager(torch_model: Any, data: np.ndarray, config: BenchConfig) -> np.ndarray:
    """Time the PyTorch model in eager mode under ``inference_mode`` on the same input."""
    import torch

    module = torch_model if isinstance(torch_model, torch.nn.Module) else torch_model()
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"torch_model must be an nn.Module or build one, not {type(module).__name__}")
    module.eval()
    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    tensor = torch.from_numpy(np.ascontiguousarray(data))
    try:
        with torch.inference_mode():
            return _time(lambda: module(tensor), config)
    finally:
        torch.set_num_threads(previous)


def _count_bundle_flops(
    manifest: RunManifest | BundleManifest, all_entries: Sequence[ModelRecord], skipped: list[tuple[str, str]]
) -> FlopCount | None:
    """FLOPs from the first model of the folder counted completely, a plain fp32 ONNX model first."""
    ordered = sorted(all_entries, key=lambda e: e.precision != "fp32")
    candidates = [manifest.path(e.file) for e in ordered if e.format == "onnx"]
    partial: FlopCount | None = None
    for path in candidates:
        try:
            count = count_flops(path)
        except BundleError as exc:
            logger.warning("%s", exc)
            continue
        if not count.uncounted and count.flops_per_image > 0:
            return count
        partial = partial or count
    if partial is not None:
        skipped.append(("floor", f"FLOPs counted only partly ({len(partial.uncounted)} nodes without shapes)"))
    else:
        skipped.append(("floor", "no ONNX model whose FLOPs could be counted"))
    return partial


def _count_per_model(
    manifest: RunManifest | BundleManifest, entries: Sequence[ModelRecord], bundle_count: FlopCount | None
) -> dict[str, FlopCount]:
    """Each model's own count (its weight bytes differ by precision); the bundle's count where it fails."""
    counts: dict[str, FlopCount] = {}
    for entry in entries:
        count = None
        if entry.format == "onnx":
            try:
                count = count_flops(manifest.path(entry.file))
            except BundleError as exc:
                logger.debug("%s", exc)
        if count is None or count.uncounted or (bundle_count and count.flops_per_image != bundle_count.flops_per_image):
            count = bundle_count
        if count is not None:
            counts[entry.label] = count
    if bundle_count is not None:
        counts.setdefault("eager", bundle_count)
    return counts


def _compare(
    rows: list[BenchRow],
    flops: FlopCount | None,
    per_model: dict[str, FlopCount],
    gemm: GemmRate,
    memory: MemoryRate | None,
) -> list[BenchRow]:
    eager = {r.batch_size: r.p50_ms for r in rows if r.backend == "torch-eager"}
    fp32 = {r.batch_size: r.p50_ms for r in rows if r.backend == "onnxruntime" and r.model == "fp32"}
    result = []
    for row in rows:
        floor_ms = flops.flops_per_image * row.batch_size / (gemm.gflops * 1e9) * 1000.0 if flops else None
        count = per_model.get(row.model)
        roofline_ms = count.roofline_ms(row.batch_size, gemm, memory) if count else None
        result.append(
            replace(
                row,
                floor_ms=floor_ms,
                vs_floor=row.p50_ms / floor_ms if floor_ms else None,
                roofline_ms=roofline_ms,
                vs_roofline=row.p50_ms / roofline_ms if roofline_ms else None,
                speedup_vs_eager=(eager[row.batch_size] / row.p50_ms) if row.batch_size in eager else None,
                speedup_vs_fp32=(fp32[row.batch_size] / row.p50_ms)
                if row.backend == "onnxruntime" and row.batch_size in fp32
                else None,
            )
        )
    return result


def _environment() -> dict[str, Any]:
    import onnxruntime as ort

    env: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "env": {k: os.environ[k] for k in _ENV_VARS if k in os.environ},
    }
    import sys

    if "torch" in sys.modules:
        env["torch"] = sys.modules["torch"].__version__
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------- presentation
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
    lines.extend(f"skipped {what}: {why}" for what, why in result.skipped)
    return lines
