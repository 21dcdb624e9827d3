"""First-divergence localisation: where does the ONNX model leave PyTorch's noise floor?

Each PyTorch module whose output one ONNX tensor carries (``scopes``) is compared, in graph order,
a few tensors at a time (``probe``): the ONNX tensor against the module's float64 output, in units
of the module's own float32 error (``floor``), exactly as verify judges the outputs. The first
layer beyond the factor is named with its figures, and the compared layers after it (the chain the
error travels along) are listed. Without a float64 run the scale-aware rule judges each layer
against PyTorch's float32 output instead, and the result says so.

This runs on the PyTorch side (``pytorch_stage.localize_stage``): it needs the module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.compare.floor import NoiseFloor, error_stats, noise_floor
from onnx_pipeline.compare.probe import OnnxProbe, chunks
from onnx_pipeline.compare.scopes import ModuleTensor, module_tensors
from onnx_pipeline.config import Tolerances

#: compared layers listed after the first divergence
CHAIN = 6


@dataclass(frozen=True)
class LayerFigures:
    """One compared layer: the ONNX node and tensor, the PyTorch module, and the error figures."""

    onnx_node: str
    op_type: str
    tensor: str
    module: str
    module_type: str
    shape: list[int]
    #: max |ONNX - PyTorch float32| (the scale-aware figure, measured under both rules)
    max_abs_error: float
    scale: float
    #: against float64, beside PyTorch float32's own (None without a float64 run)
    noise: NoiseFloor | None
    within: bool

    __json_extra__ = ("ratio",)

    @property
    def ratio(self) -> float | None:
        return self.noise.ratio if self.noise is not None else None

    def describe(self) -> str:
        what = self.noise.describe() if self.noise is not None else f"max abs error {self.max_abs_error:.3g}"
        return f"{self.onnx_node} (module {self.module}, {self.module_type}): {what}"


@dataclass(frozen=True)
class Localization:
    """Where the ONNX model first leaves the floor, and how the layers after it fare."""

    #: "diverged" (a first divergence was found), "clean" (every compared layer within), "unmapped"
    status: str
    #: one sentence
    summary: str
    rule: str
    sample_set: str
    samples: int
    mapped_layers: int
    compared_layers: int
    first_divergence: LayerFigures | None
    #: the last compared layer within the floor before the first divergence
    last_within: LayerFigures | None
    chain: list[LayerFigures] = field(default_factory=list)
    #: the largest noise-floor ratio of the layers compared (None without a float64 run)
    max_ratio: float | None = None
    seconds: float = 0.0


def localize_divergence(
    module: Any,
    onnx_path: Path,
    sample_set: str,
    batches: Sequence[np.ndarray],
    tolerances: Tolerances,
    *,
    providers: Sequence[str] | None = None,
    float64: bool = True,
) -> Localization:
    """Walk ``onnx_path``'s module tensors in graph order against ``module`` on ``batches``; see the module doc."""
    from onnx_pipeline.compare.reference import float64_obstacle, module_calls

    start = time.perf_counter()
    probe = OnnxProbe(onnx_path, providers=providers)
    calls = module_calls(module, batches[0][:1] if len(batches[0]) > 1 and _dynamic(probe) else batches[0])
    mapped = [m for m in module_tensors(probe.model.graph) if calls.get(m.module, (0, None, ""))[:1] == (1,)]
    mapped = [m for m in mapped if calls[m.module][1] is not None]
    float64 = float64 and float64_obstacle(module) is None
    rule = "noise-floor" if float64 else "scale-aware"
    samples = sum(len(b) for b in batches)
    layers: list[LayerFigures] = []
    first: LayerFigures | None = None
    chain: list[LayerFigures] = []
    for names in chunks([m.tensor for m in mapped], probe, samples):
        run = [m for m in mapped if m.tensor in names]
        for figures in _compare_chunk(module, probe, run, calls, batches, tolerances, float64):
            layers.append(figures)
            if first is None and not figures.within:
                first = figures
            elif first is not None:
                chain.append(figures)
        if first is not None and len(chain) >= CHAIN:
            break
    before = [f for f in layers[: layers.index(first)] if f.within] if first is not None else layers
    return Localization(
        status="diverged" if first else "clean" if layers else "unmapped",
        summary=_summary(first, layers, mapped, rule, tolerances),
        rule=rule,
        sample_set=sample_set,
        samples=samples,
        mapped_layers=len(mapped),
        compared_layers=len(layers),
        first_divergence=first,
        last_within=before[-1] if before else None,
        chain=chain[:CHAIN],
        max_ratio=max((f.ratio for f in layers if f.ratio is not None), default=None),
        seconds=round(time.perf_counter() - start, 3),
    )


def _dynamic(probe: OnnxProbe) -> bool:
    for value in probe.model.graph.input:
        if value.name == probe.input_name:
            dims = value.type.tensor_type.shape.dim
            return bool(dims) and not dims[0].HasField("dim_value")
    return False


def _compare_chunk(
    module: Any,
    probe: OnnxProbe,
    run: list[ModuleTensor],
    calls: dict[str, tuple[int, tuple[int, ...] | None, str]],
    batches: Sequence[np.ndarray],
    tolerances: Tolerances,
    float64: bool,
) -> list[LayerFigures]:
    from onnx_pipeline.compare.reference import capture_outputs

    onnx = probe.run([m.tensor for m in run], batches)
    torch32 = capture_outputs(module, [m.module for m in run], batches, float64=False)
    exact = capture_outputs(module, [m.module for m in run], batches, float64=True) if float64 else {}
    figures = []
    for m in run:
        ours, theirs = onnx[m.tensor], torch32.get(m.module)
        if theirs is None or ours.shape != theirs.shape:
            continue  # the tensor is not what the module returns (a reshaped or fused form)
        figures.append(_layer_figures(m, calls[m.module][2], ours, theirs, exact.get(m.module), tolerances))
    return figures


def _layer_figures(
    m: ModuleTensor,
    module_type: str,
    onnx: np.ndarray,
    torch32: np.ndarray,
    exact: np.ndarray | None,
    tolerances: Tolerances,
) -> LayerFigures:
    stats = error_stats(torch32, onnx)
    noise = noise_floor(exact, torch32, onnx, tolerances.noise_factor) if exact is not None else None
    if noise is not None:
        within = noise.within
    else:
        atol, rtol = tolerances.scale_aware()
        within = _scale_aware_within(torch32, onnx, atol * stats.scale, rtol)
    return LayerFigures(
        onnx_node=m.node,
        op_type=m.op_type,
        tensor=m.tensor,
        module=m.module,
        module_type=module_type,
        shape=list(onnx.shape[1:]),
        max_abs_error=stats.max_abs,
        scale=stats.scale,
        noise=noise,
        within=within,
    )


def _scale_aware_within(ref: np.ndarray, act: np.ndarray, atol_abs: float, rtol: float) -> bool:
    ref64, act64 = ref.astype(np.float64), act.astype(np.float64)
    finite = np.isfinite(ref64) & np.isfinite(act64)
    if not np.array_equal(np.isfinite(ref64), np.isfinite(act64)):
        return False
    return bool(np.all(np.abs(ref64[finite] - act64[finite]) <= atol_abs + rtol * np.abs(ref64[finite])))


def _summary(
    first: LayerFigures | None,
    layers: list[LayerFigures],
    mapped: list[ModuleTensor],
    rule: str,
    tolerances: Tolerances,
) -> str:
    if first is not None:
        return f"first divergence at {first.describe()}"
    if not layers:
        return (
            "no ONNX tensor maps to a PyTorch module called once per forward pass (exporter metadata or scope "
            "names missing): only the outputs were compared"
        )
    judged = (
        f"within {tolerances.noise_factor:g}× its floor" if rule == "noise-floor" else "within the scale-aware rule"
    )
    return (
        f"every compared layer stays {judged} ({len(layers)} of {len(mapped)} mapped layers, the last module "
        f"{layers[-1].module}): any difference arises after it"
    )
