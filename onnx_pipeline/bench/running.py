"""Running a benchmark: every model of a bundle at each batch size, PyTorch eager beside it, the floors.

torch is imported only inside ``_bench_eager``.
"""

from __future__ import annotations

import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.bench.floors import (
    ENV_VARS,
    GemmRate,
    MemoryRate,
    measure_gemm_rate,
    measure_gemv_bandwidth,
    time_runs,
)
from onnx_pipeline.bench.flops import FlopCount, count_flops
from onnx_pipeline.errors import BundleError, InputError
from onnx_pipeline.files import to_jsonable
from onnx_pipeline.manifest import MANIFEST, BundleManifest, ModelRecord, RunManifest, read_manifest
from onnx_pipeline.runtime.bundle import Bundle, model_entries
from onnx_pipeline.runtime.session import SessionSettings

logger = logging.getLogger(__name__)

#: the largest batch size bench takes (memory is checked against the model's sizes too, see _check_memory)
MAX_BATCH = 4096


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
class Skipped:
    """Something bench could not measure, and why."""

    what: str
    reason: str


@dataclass(frozen=True)
class BenchResult:
    """Every measurement of one ``benchmark_bundle`` call, with the floor, settings and what was skipped."""

    bundle: str
    rows: tuple[BenchRow, ...]
    gemm: GemmRate
    flops: FlopCount | None
    threads: int
    session: dict[str, Any]
    skipped: tuple[Skipped, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    memory: MemoryRate | None = None

    def row(self, backend: str, precision: str, batch_size: int) -> BenchRow | None:
        """The first row for this backend, precision and batch size, if measured."""
        for candidate in self.rows:
            if (candidate.backend, candidate.precision, candidate.batch_size) == (backend, precision, batch_size):
                return candidate
        return None


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
    _check_memory(manifest, entries, config)

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
    elif config.eager and not any(what == "torch-eager" for what, _ in skipped):
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
        skipped=tuple(Skipped(what, why) for what, why in skipped),
        environment=_environment(),
        memory=memory,
    )


def _check_memory(manifest: RunManifest | BundleManifest, entries: Sequence[ModelRecord], config: BenchConfig) -> None:
    """Refuse batch sizes whose activations cannot fit in this machine's available memory (before any run)."""
    model = next((e for e in entries if e.format == "onnx"), None)
    available = available_memory()
    if model is None or available is None:
        return
    try:
        count = count_flops(manifest.path(model.file))
    except BundleError:
        return
    batch = max(config.batch_sizes)
    need = batch * count.activation_bytes + 2 * count.weight_bytes
    if need > 0.8 * available:
        fits = max(1, int((0.8 * available - 2 * count.weight_bytes) // max(count.activation_bytes, 1)))
        raise InputError(
            f"batch size {batch} needs about {need / 2**30:.1f} GiB for {model.file} (activations "
            f"{count.activation_bytes / 2**20:.0f} MiB per image), more than the {available / 2**30:.1f} GiB "
            f"available here: use batch sizes up to about {fits}"
        )


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of Linux's MemAvailable, the cgroup's memory limit and
    the address-space rlimit (None where none is known)."""
    limits: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            limits.append(int(text) - used)
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    except (ImportError, ValueError, OSError):
        pass
    return min(limits) if limits else None


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
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
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
