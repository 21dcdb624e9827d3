"""Shared by the lowering builders (int8-qdq, fp16, vitis-ai): per-layer sensitivity, then automatic fallback.

After a builder has written and judged its lowered model, ``sensitivity_and_fallback`` ranks its layers
(``compare.sensitivity``) and, when the model misses its thresholds and the bundle allows it
(``BuildContext.fallback``), keeps the most sensitive layers in float32 until the thresholds hold or
the profile's budget (``[fallback] max_float_layers_fraction`` of the lowered layers) is spent: one
layer at a time, most sensitive first (see ``_search``). A repaired model replaces the file and is
judged again the way ``verify BUNDLE`` judges it.
Without a miss nothing changes but the sensitivity recorded.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnx_pipeline.artifacts.base import BuildContext, BundleModel, run_batches
from onnx_pipeline.bundling.fidelity import FidelityResult, judge
from onnx_pipeline.compare.sensitivity import (
    DEFAULT_SAMPLES,
    SensitivityResult,
    VariantRunner,
    analyse_sensitivity,
)
from onnx_pipeline.files import to_jsonable
from onnx_pipeline.onnxfile import ModelParts, load_parts, write_model
from onnx_pipeline.targets import FidelityThresholds

#: layers tried at each step of the fallback after the first (by sensitivity rank)
CANDIDATES = 4


@dataclass(frozen=True)
class LoweredModel:
    """A lowered model a builder wrote, and how to judge it."""

    file: str
    kind: str
    precision: str
    #: the float model the kept layers take their weights from (the graph the lowered one was made from)
    reference: ModelParts
    thresholds: FidelityThresholds
    #: fp16 (casts around a kept layer) rather than QDQ
    half: bool = False
    #: the per-layer comparison runs QuantizeLinear/DequantizeLinear as written (float simulation)
    qdq_as_float: bool = True


@dataclass(frozen=True)
class Repair:
    """The model after sensitivity and fallback, and what to record."""

    model: BundleModel
    #: merged into the builder's manifest section: ``sensitivity``, ``fallback``, ``kept_in_float``
    section: dict[str, Any]
    timings: dict[str, float]
    kept: tuple[str, ...] = ()
    #: sha256 of the rewritten model file (empty when it was not rewritten)
    hashes: dict[str, str] = field(default_factory=dict)


def sensitivity_and_fallback(ctx: BuildContext, lowered: LoweredModel, model: BundleModel) -> Repair:
    """Rank ``lowered``'s layers; repair it when ``model`` (its judged form) misses its thresholds."""
    parts = load_parts(ctx.out / lowered.file)
    sensitivity = _sensitivity(ctx, lowered, parts)
    timings = {"sensitivity": sensitivity.seconds}
    section: dict[str, Any] = {"sensitivity": to_jsonable(sensitivity)}
    if not model.fidelity.failures:
        section["kept_in_float"] = []
        section["fallback"] = {"needed": False}
        return Repair(model, section, timings)
    fraction = ctx.target.fallback.max_float_layers_fraction
    budget = min(len(sensitivity.layers), max(1, math.floor(fraction * len(sensitivity.layers)))) if fraction else 0
    if not ctx.fallback or budget == 0:
        why = (
            "turned off (--no-fallback)" if not ctx.fallback else "no budget ([fallback] max_float_layers_fraction = 0)"
        )
        section["fallback"] = {"needed": True, "enabled": False, "note": why}
        return Repair(model, section, timings)
    start_fallback = time.perf_counter()
    kept, trials = _search(ctx, lowered, parts, sensitivity, budget)
    fallback = {
        "needed": True,
        "enabled": True,
        "max_float_layers_fraction": fraction,
        "budget_layers": budget,
        "lowered_layers": len(sensitivity.layers),
        "trials": trials,
        "before": _figures(model.fidelity),
    }
    if not kept:
        fallback.update(
            passed=False, note=f"the thresholds still fail with the {budget} most sensitive layers in float"
        )
        timings["fallback"] = round(time.perf_counter() - start_fallback, 3)
        section["fallback"] = fallback
        section["kept_in_float"] = []
        return Repair(model, section, timings)
    hashes = _write(ctx, lowered, parts, kept)
    repaired = ctx.check(lowered.file, lowered.kind, lowered.precision, thresholds=lowered.thresholds)
    fallback.update(passed=not repaired.fidelity.failures, after=_figures(repaired.fidelity))
    timings["fallback"] = round(time.perf_counter() - start_fallback, 3)
    section["fallback"] = fallback
    section["kept_in_float"] = _kept_entries(sensitivity, kept, model.fidelity)
    return Repair(repaired, section, timings, tuple(kept), hashes)


def _static(parts: ModelParts) -> bool:
    initializers = {t.name for t in parts.skeleton.graph.initializer}
    first = next(i for i in parts.skeleton.graph.input if i.name not in initializers)
    dims = first.type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0


def _sensitivity(ctx: BuildContext, lowered: LoweredModel, parts: ModelParts) -> SensitivityResult:
    inputs = np.asarray(ctx.data.heldout[:DEFAULT_SAMPLES], dtype=np.float32)
    reference = [r[: len(inputs)] for r in ctx.reference]
    batches = [inputs[i : i + 1] for i in range(len(inputs))] if _static(parts) else [inputs]
    runner = VariantRunner(parts, lowered.reference, inputs, lowered.half, run_batches)
    return analyse_sensitivity(lowered.file, runner, reference, batches=batches, qdq_as_float=lowered.qdq_as_float)


def _search(
    ctx: BuildContext, lowered: LoweredModel, parts: ModelParts, sensitivity: SensitivityResult, budget: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """Keep layers in float one at a time until the thresholds hold or ``budget`` layers are kept.

    The most sensitive layer first; then, given the layers kept so far, each of the next ``CANDIDATES``
    by rank is tried and the one that raises the output SQNR most is kept (layers interact: one whose
    output is quantized again may only help once the layer after it is kept too).
    """
    ranked = sensitivity.ranked_names()
    runner = VariantRunner(
        parts, lowered.reference, np.asarray(ctx.data.heldout, np.float32), lowered.half, run_batches
    )
    trials: list[dict[str, Any]] = []

    def judged(layers: list[str]) -> FidelityResult:
        outputs = runner.outputs(layers)
        verdict = judge(lowered.file, lowered.precision, list(ctx.output_names), list(ctx.reference), outputs,
                        lowered.thresholds, ctx.data.description)  # fmt: skip
        trials.append({"layers": layers, "passed": not verdict.failures, **_figures(verdict)})
        return verdict

    kept = ranked[:1]
    if not judged(kept).failures:
        return kept, trials
    while len(kept) < budget:
        candidates = [name for name in ranked if name not in kept][:CANDIDATES]
        if not candidates:
            break
        results = [(judged([*kept, name]), name) for name in candidates]
        passing = [name for verdict, name in results if not verdict.failures]
        if passing:
            return [*kept, passing[0]], trials
        kept.append(max(results, key=lambda r: _worst_sqnr(r[0]))[1])
    return [], trials


def _worst_sqnr(fidelity: FidelityResult) -> float:
    return min((o.sqnr_db for o in fidelity.outputs), default=-math.inf)


def _figures(fidelity: FidelityResult) -> dict[str, Any]:
    """The worst output's figures."""
    if not fidelity.outputs:
        return {}
    worst = min(fidelity.outputs, key=lambda o: o.min_cosine)
    return {
        "min_cosine": worst.min_cosine,
        "sqnr_db": worst.sqnr_db,
        "top1_agreement": worst.top1_agreement,
        "failures": list(fidelity.failures),
    }


def _write(ctx: BuildContext, lowered: LoweredModel, parts: ModelParts, kept: list[str]) -> dict[str, str]:
    """Write the repaired model beside, then over, the lowered file (the old one may still be mapped)."""
    from onnx_pipeline.compare.keep_float import keep_in_float

    variant = keep_in_float(parts, lowered.reference, kept, half=lowered.half)
    folder = ctx.scratch / f"fallback-{lowered.kind}"
    folder.mkdir(exist_ok=True)
    written = write_model(variant.skeleton, folder / lowered.file, weights=variant.weights)
    hashes = written.hashes(folder)
    data = ctx.out / f"{lowered.file}.data"
    if data.exists():
        data.unlink()
    for name in hashes:
        os.replace(folder / name, ctx.out / name)
    shutil.rmtree(folder, ignore_errors=True)
    return hashes


def _kept_entries(sensitivity: SensitivityResult, kept: list[str], before: FidelityResult) -> list[dict[str, Any]]:
    by_name = {x.layer: x for x in sensitivity.layers}
    missed = "; ".join(before.failures)
    entries = []
    for rank, name in enumerate(kept, start=1):
        layer = by_name[name]
        why = (
            f"alone in float it raises the output SQNR by {layer.effect:.1f} dB"
            if layer.effect is not None
            else f"its SQNR drops {layer.sqnr_drop_db:.1f} dB at this layer"
        )
        entries.append(
            {
                "layer": name,
                "op_type": layer.op_type,
                "rank": rank,
                "reason": f"sensitivity rank {rank}: {why}; the lowered model missed: {missed}",
                "sqnr_db": layer.sqnr_db,
                "effect": layer.effect,
            }
        )
    return entries
