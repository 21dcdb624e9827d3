"""AMD's QDQ quantization schemes (XINT8, VINT8, A8W8, A16W8), simulated on the CPU as an ONNX QDQ model.

One quantizer for every scheme (``scheme.py`` says how they differ): the plan of which tensors
get a QDQ pair (``plan.py``), the calibration statistics (``calibrate.py``), then either
power-of-two positions (MinMSE, tie groups at the coarser position, and for XINT8 the DPU's shift
constraints of ``refine.py``) or float scales (MinMax, tie groups at the larger range, int32 biases
at input scale x weight scale), and the QDQ graph (``qdq.py``). ``check.py`` re-reads the written
model and names every rule it breaks.

Every quantized tensor is symmetric with zero point 0, per tensor. The DPU fuses Conv/Gemm with a
following ReLU/LeakyReLU/ReLU6, so no QDQ pair sits between them in XINT8 (A8W8/A16W8 fold ReLU the
same way; VINT8 keeps a pair on every tensor, as Quark's VAIML configuration does).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_pipeline.errors import BundleError
from onnx_pipeline.runtime.session import create_session
from onnx_pipeline.vitis.calibrate import (
    W_MAX,
    Histogram,
    no_overflow_position,
    quantize_array,
    symmetric_scale,
    weight_amax,
    weight_position,
)
from onnx_pipeline.vitis.check import check_qdq, check_xint8
from onnx_pipeline.vitis.graph import ModelParts, shapes, topological_sort, write_model, write_model_external
from onnx_pipeline.vitis.plan import Groups, QuantPlan, augment
from onnx_pipeline.vitis.qdq import QuantParam, build_qdq_graph
from onnx_pipeline.vitis.refine import refine
from onnx_pipeline.vitis.scheme import XINT8, QuantScheme

__all__ = [
    "Histogram",
    "QuantParam",
    "QuantResult",
    "XInt8Result",
    "check_qdq",
    "check_xint8",
    "no_overflow_position",
    "quantize",
    "quantize_array",
    "quantize_xint8",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantResult:
    """What the quantizer wrote and measured."""

    path: Path
    scheme: str
    params: dict[str, QuantParam]
    adjustments: tuple[str, ...]
    reference_outputs: dict[str, np.ndarray]  # fp32 outputs on the held-out inputs
    output_names: tuple[str, ...]
    calibration_samples: int
    seconds: dict[str, float]


XInt8Result = QuantResult


@dataclass(frozen=True)
class _Calibration:
    hists: dict[str, Histogram]
    reference: dict[str, np.ndarray]
    output_names: tuple[str, ...]


def quantize_xint8(
    parts: ModelParts, calibration: np.ndarray, heldout: np.ndarray | None, out_path: Path, *, scratch_dir: Path
) -> QuantResult:
    """XINT8 (power-of-two, DPU constraints): see :func:`quantize`."""
    return quantize(parts, calibration, heldout, out_path, scheme=XINT8, scratch_dir=scratch_dir)


def quantize(
    parts: ModelParts,
    calibration: np.ndarray,
    heldout: np.ndarray | None,
    out_path: Path,
    *,
    scheme: QuantScheme,
    scratch_dir: Path,
) -> QuantResult:
    """Calibrate on ``calibration`` (N, C, H, W), write the ``scheme`` QDQ model to ``out_path``.

    ``parts`` is the static opset-17 fp32 model; its weights are replaced by integer arrays in place
    (the float copy is released to keep peak memory at about one model). The fp32 outputs on
    ``heldout`` are computed in the same session, for the fidelity report.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    plan = QuantPlan(parts, fuse_activations=scheme.fuse_activations, tie_layout_ops=scheme.tie_layout_ops)
    input_name = _check_input(parts, plan, calibration)
    stats = _calibrate(parts, plan, input_name, np.asarray(calibration, dtype=np.float32), heldout, scratch_dir)
    timings["calibrate"] = time.perf_counter() - start

    t1 = time.perf_counter()
    if scheme.scale_rule == "pow2":
        params, adjustments = _pow2_params(parts, plan, stats.hists, scheme)
    else:
        params, adjustments = _float_params(parts, plan, stats.hists, scheme)
    timings["scales"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    qweights = build_qdq_graph(parts, plan, params, scheme)
    topological_sort(parts.skeleton.graph)
    write_model(parts.skeleton, qweights, out_path)
    parts.weights = qweights  # the float arrays are no longer referenced
    timings["write"] = time.perf_counter() - t2
    log.info("%s: %d activation and %d weight tensors quantized", scheme.name, len(plan.quantized), len(plan.weights))
    return QuantResult(
        path=out_path,
        scheme=scheme.name,
        params=params,
        adjustments=adjustments,
        reference_outputs=stats.reference,
        output_names=stats.output_names,
        calibration_samples=len(calibration),
        seconds=timings,
    )


def _check_input(parts: ModelParts, plan: QuantPlan, calibration: np.ndarray) -> str:
    if len(plan.graph_inputs) != 1:
        raise BundleError(f"the AMD bundles need a single-input model, this one has {plan.graph_inputs}")
    input_name = plan.graph_inputs[0]
    expected = shapes(parts.skeleton)[input_name]
    calibration = np.asarray(calibration)
    if calibration.ndim != len(expected) or tuple(calibration.shape[1:]) != tuple(expected[1:]):
        raise BundleError(f"calibration samples are {calibration.shape[1:]}, the model takes {expected[1:]}")
    if len(calibration) == 0:
        raise BundleError("no calibration samples: give --calibration-images or allow synthetic calibration")
    return input_name


def _calibrate(
    parts: ModelParts,
    plan: QuantPlan,
    input_name: str,
    calibration: np.ndarray,
    heldout: np.ndarray | None,
    scratch_dir: Path,
) -> _Calibration:
    """Activation histograms and fp32 reference outputs, one session with the needed extra outputs."""
    stats_tensors = [t for t in plan.quantized if t in plan.own and t != input_name]
    calib_path = scratch_dir / "calibration_model.onnx"
    write_model_external(augment(parts, stats_tensors), parts.weights, calib_path)
    session = create_session(calib_path, what="the calibration model")
    hists = {t: Histogram() for t in plan.quantized if t in plan.own}
    output_names = tuple(o.name for o in parts.skeleton.graph.output)
    for sample in calibration:
        batch = sample[None]
        if input_name in hists:
            hists[input_name].add(batch)
        for t, v in zip(stats_tensors, session.run(stats_tensors, {input_name: batch}), strict=True):
            hists[t].add(v)
    reference: dict[str, list[np.ndarray]] = {n: [] for n in output_names}
    if heldout is not None:
        for sample in np.asarray(heldout, dtype=np.float32):
            for n, v in zip(output_names, session.run(list(output_names), {input_name: sample[None]}), strict=True):
                reference[n].append(v)
    del session
    calib_path.unlink(missing_ok=True)
    Path(f"{calib_path}.data").unlink(missing_ok=True)
    joined = {n: np.concatenate(v) for n, v in reference.items() if v}
    return _Calibration(hists=hists, reference=joined, output_names=output_names)


def _weight_values(parts: ModelParts, name: str) -> np.ndarray:
    values = parts.weights[name] if name in parts.weights else parts.array(name)
    assert values is not None  # plan.weights only holds initializers
    return values


def _pow2_params(
    parts: ModelParts, plan: QuantPlan, hists: dict[str, Histogram], scheme: QuantScheme
) -> tuple[dict[str, QuantParam], tuple[str, ...]]:
    """MinMSE positions, tie groups at the coarser position, then (XINT8) the DPU's shift constraints."""
    positions = Groups(merge=min)
    minmse: dict[str, tuple[int, int]] = {}
    for t, hist in hists.items():
        best, p0, _ = hist.best_position()
        positions.value[t] = best
        positions.parent[t] = t
        minmse[t] = (best, p0)
    plan.tie_groups(positions)
    weight_pos: dict[str, int] = {}
    weight_minmse: dict[str, tuple[int, int]] = {}
    for name in plan.weights:
        best, p0, _ = weight_position(_weight_values(parts, name))
        weight_pos[name] = best
        weight_minmse[name] = (best, p0)
    wmoved: dict[str, list[str]] = {}
    if scheme.dpu_shifts:
        refine(plan, positions, weight_pos, wmoved)
    params: dict[str, QuantParam] = {}
    for t in plan.quantized:
        pos = positions.get(t)
        mm = minmse.get(t) or minmse.get(positions.find(t), (pos, pos))
        why = _why_moved(t, positions, minmse)
        params[t] = QuantParam(t, "activation", 2.0**-pos, "int8", pos, mm[0], mm[1], None, why)
    for name, kind in plan.weights.items():
        pos = weight_pos[name]
        mm = weight_minmse[name]
        params[name] = QuantParam(name, kind, 2.0**-pos, "int8", pos, mm[0], mm[1], None, tuple(wmoved.get(name, [])))
    return params, tuple(positions.log + [m for ms in wmoved.values() for m in ms])


def _why_moved(t: str, positions: Groups, minmse: dict[str, tuple[int, int]]) -> tuple[str, ...]:
    rules = list(positions.moved.get(t, []))
    if not rules and t in minmse and positions.get(t) != minmse[t][0]:
        rules.append("align")  # tied to a Concat group (or pooled/layout chain) at a coarser position
    return tuple(rules)


def _float_params(
    parts: ModelParts, plan: QuantPlan, hists: dict[str, Histogram], scheme: QuantScheme
) -> tuple[dict[str, QuantParam], tuple[str, ...]]:
    """MinMax float scales; tie groups take the largest range; int32 biases at input x weight scale."""
    ranges = Groups(merge=max)
    for t, hist in hists.items():
        ranges.value[t] = hist.amax
        ranges.parent[t] = t
    plan.tie_groups(ranges)
    qmax = scheme.activation_range[1]
    params: dict[str, QuantParam] = {}
    for t in plan.quantized:
        amax = float(ranges.get(t))
        moved = ("align",) if t in hists and hists[t].amax != amax else ()
        params[t] = QuantParam(t, "activation", symmetric_scale(amax, qmax), scheme.activation_dtype, amax=amax,
                               adjusted_by=moved)  # fmt: skip
    for node in plan.compute:
        w = node.input[1]
        amax = weight_amax(_weight_values(parts, w))
        params[w] = QuantParam(w, "weight", symmetric_scale(amax, W_MAX), "int8", amax=amax)
        if len(node.input) > 2 and node.input[2]:
            b = node.input[2]
            if node.input[0] not in params:
                raise BundleError(f"{node.op_type} '{node.name}': its input is not quantized, so its bias has no scale")
            scale = float(np.float32(params[node.input[0]].scale) * np.float32(params[w].scale))
            params[b] = QuantParam(b, "bias", scale, "int32", amax=weight_amax(_weight_values(parts, b)))
    return params, tuple(f"align: {t} shares its group's range" for t, p in params.items() if p.adjusted_by)
