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

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.compare.floor import NoiseFloor, error_stats, noise_floor
from onnx_pipeline.compare.probe import OnnxProbe, chunks
from onnx_pipeline.compare.scopes import ModuleTensor, module_tensors
from onnx_pipeline.config import Tolerances
from onnx_pipeline.files import release_memory

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

    #: "diverged" (a first divergence was found), "clean" (every compared layer within), "unmapped",
    #: "unavailable" (it could not run: ``summary`` says why)
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


def unavailable(reason: str, sample_set: str, samples: int, rule: str = "noise-floor") -> Localization:
    """A localisation that could not run, and why (the verification verdict stands without it)."""
    return Localization(
        status="unavailable",
        summary=reason,
        rule=rule,
        sample_set=sample_set,
        samples=samples,
        mapped_layers=0,
        compared_layers=0,
        first_divergence=None,
        last_within=None,
    )


def localize_divergence(
    load_module: Callable[[], Any],
    onnx_path: Path,
    sample_set: str,
    batches: Sequence[np.ndarray],
    tolerances: Tolerances,
    *,
    providers: Sequence[str] | None = None,
    float64: bool = True,
) -> Localization:
    """Walk ``onnx_path``'s module tensors in graph order against the PyTorch model; see the module doc.

    ``load_module()`` gives the model, held only while PyTorch runs: once in float32 and once in float64
    on ``batches``, saving the mapped modules' outputs to a temporary folder as they come. The model is
    then let go (its memory handed back) before onnxruntime fetches the ONNX tensors a few at a time, in
    graph order, stopping a few layers after the first divergence.
    """
    from onnx_pipeline.compare.reference import float64_obstacle, float64_pieces, module_calls, save_outputs

    start = time.perf_counter()
    graph = _graph(onnx_path)  # the weights are let go: PyTorch's float64 pass needs the room
    dynamic = _dynamic(graph)
    module = load_module()
    calls = module_calls(module, batches[0][:1] if len(batches[0]) > 1 and dynamic else batches[0])
    once = {name for name, (count, shape, _) in calls.items() if count == 1 and shape is not None}
    mapped = [m for m in module_tensors(graph) if m.module in once]
    float64 = float64 and float64_obstacle(module) is None
    rule = "noise-floor" if float64 else "scale-aware"
    layers: list[LayerFigures] = []
    with tempfile.TemporaryDirectory(prefix="onnx-pipeline-localize-") as folder:
        modules = [m.module for m in mapped]
        torch32 = save_outputs(module, modules, batches, Path(folder), float64=False)
        pieces = [float64_pieces(module, b) for b in batches] if dynamic else None
        exact = save_outputs(module, modules, batches, Path(folder), float64=True, pieces=pieces) if float64 else {}
        mapped = [m for m in mapped if m.module in torch32]
        del module
        release_memory()
        probe = OnnxProbe(onnx_path, providers=providers)
        for names in chunks([m.tensor for m in mapped], probe, sum(len(b) for b in batches)):
            layers += _compare_chunk(
                probe, [m for m in mapped if m.tensor in names], calls, batches, torch32, exact, tolerances
            )
            first = next((f for f in layers if not f.within), None)
            if first is not None and len(layers) - layers.index(first) > CHAIN:
                break
    return _localization(layers, mapped, rule, sample_set, sum(len(b) for b in batches), tolerances, start)


def _localization(
    layers: list[LayerFigures],
    mapped: list[ModuleTensor],
    rule: str,
    sample_set: str,
    samples: int,
    tolerances: Tolerances,
    start: float,
) -> Localization:
    first = next((f for f in layers if not f.within), None)
    at = layers.index(first) if first is not None else len(layers)
    before = [f for f in layers[:at] if f.within]
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
        chain=layers[at + 1 : at + 1 + CHAIN],
        max_ratio=max((f.ratio for f in layers if f.ratio is not None), default=None),
        seconds=round(time.perf_counter() - start, 3),
    )


def _graph(path: Path) -> Any:
    """The graph of ``path`` without its initializers."""
    from onnx_pipeline.onnxfile import load_onnx, model_skeleton

    return model_skeleton(load_onnx(path)).graph


def _dynamic(graph: Any) -> bool:
    """The (first) graph input has a free batch axis."""
    initializers = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name not in initializers:
            dims = value.type.tensor_type.shape.dim
            return bool(dims) and not dims[0].HasField("dim_value")
    return False


def _compare_chunk(
    probe: OnnxProbe,
    run: list[ModuleTensor],
    calls: dict[str, tuple[int, tuple[int, ...] | None, str]],
    batches: Sequence[np.ndarray],
    torch32: dict[str, list[Path]],
    exact: dict[str, list[Path]],
    tolerances: Tolerances,
) -> list[LayerFigures]:
    from onnx_pipeline.compare.reference import load_saved

    onnx = probe.run([m.tensor for m in run], batches)
    figures = []
    for m in run:
        ours, theirs = onnx.pop(m.tensor), load_saved(torch32[m.module])
        if ours.shape != theirs.shape:
            continue  # the tensor is not what the module returns (a reshaped or fused form)
        reference = load_saved(exact[m.module]) if m.module in exact else None
        figures.append(_layer_figures(m, calls[m.module][2], ours, theirs, reference, tolerances))
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
