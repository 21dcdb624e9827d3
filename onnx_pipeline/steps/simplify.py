"""Simplify an ONNX graph with onnxsim (or onnxslim), keeping the weights out of the simplifier.

Simplifiers copy the whole model proto several times (onnxsim took 12.7 s and 3.35 GB on
VGG16, and removed no node). Most of that is the weights, which a simplifier only needs where
it folds or fuses them. So the model is simplified *weightless*: every large initializer that is
only a Conv/Gemm/MatMul weight or bias (and is not about to be fused into by a following
BatchNormalization) becomes a graph input of the same name, type and shape; the simplifier
sees the structure, the shapes, and the small constants it can fold; the weights are put back
untouched afterwards. A large initializer used any other way (transposed, reshaped, fused) is
given to the simplifier with its data, so the result is the one the simplifier would give.

If the simplifier fails, the unsimplified model is kept and the reason recorded. If it changed
the graph, the simplified model is run against the unsimplified one on onnxruntime and refused
when their outputs differ.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.config import SimplifyConfig
from onnx_pipeline.errors import first_line
from onnx_pipeline.onnxfile import (
    ModelInfo,
    describe_model,
    load_onnx,
    restore_initializers,
    weightless_copy,
    write_model,
)

logger = logging.getLogger(__name__)

#: initializers at least this large are kept out of the simplifier when that is safe
HIDE_BYTES = 1 << 20
_WEIGHT_CONSUMERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_FUSING_SUCCESSORS = {"BatchNormalization"}


@dataclass(frozen=True)
class SimplifyResult:
    """What simplification did: counts before and after, and whether the result was kept."""

    backend: str
    applied: bool  # the simplified model replaced the original
    changed: bool  # the simplifier changed the graph
    reason: str  # why not applied, or a summary
    before: ModelInfo | None
    after: ModelInfo | None
    weights_kept_out: int = 0
    output_max_abs_diff: float | None = None
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)


def _tensor_bytes(tensor: Any) -> int:
    import onnx

    if tensor.external_data:
        for entry in tensor.external_data:
            if entry.key == "length":
                return int(entry.value)
    if tensor.raw_data:
        return len(tensor.raw_data)
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _hideable(model: Any) -> set[str]:
    """Names of large initializers that are only Conv/Gemm/MatMul weights, with no fusion after."""
    consumers: dict[str, list[Any]] = {}
    producers_out: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers_out[name] = []
    for node in model.graph.node:
        for name in node.input:
            if name in producers_out:
                producers_out[name].append(node)
    hide = set()
    for init in model.graph.initializer:
        if _tensor_bytes(init) < HIDE_BYTES:
            continue
        users = consumers.get(init.name, [])
        if not users or any(u.op_type not in _WEIGHT_CONSUMERS or u.input[0] == init.name for u in users):
            continue
        followers = [f for u in users for out in u.output for f in producers_out.get(out, [])]
        if any(f.op_type in _FUSING_SUCCESSORS for f in followers):
            continue
        hide.add(init.name)
    return hide


def _run_simplifier(model: Any, backend: str) -> Any:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        if backend == "onnxsim":
            import onnxsim

            simplified, ok = onnxsim.simplify(model, check_n=0)
            if not ok:
                raise RuntimeError("onnxsim reported that its check failed")
            return simplified
        import onnxslim

        return onnxslim.slim(model)


class _SimplifierFailed(Exception):
    def __init__(self, reason: str, hidden: int) -> None:
        super().__init__(reason)
        self.reason, self.hidden = reason, hidden


def _simplify_weightless(model: Any, base: Path, backend: str) -> tuple[Any, list[Any]]:
    """Run the simplifier on ``model`` without its hideable weights; returns (result, the weights put back).

    ``model`` (loaded without external data) gets the data of every other externally stored tensor:
    the simplifier may fold them. ``_SimplifierFailed`` when the simplifier raises.
    """
    import onnx
    from onnx import external_data_helper

    hidden_names = _hideable(model)
    hidden = [init for init in model.graph.initializer if init.name in hidden_names]
    for init in model.graph.initializer:
        if init.name not in hidden_names and init.external_data:
            external_data_helper.load_external_data_for_tensor(init, str(base))
            init.data_location = onnx.TensorProto.DEFAULT
            del init.external_data[:]
    # Work on a weightless copy: the hidden weights become graph inputs of the same signature.
    weightless = weightless_copy(model, hidden_names, as_inputs=True)
    try:
        simplified = _run_simplifier(weightless, backend)
    except Exception as exc:  # simplifiers raise anything, including from C++
        reason = f"{type(exc).__name__}: {first_line(exc)[:300]}" if str(exc).strip() else type(exc).__name__
        raise _SimplifierFailed(reason, len(hidden)) from None
    # Put the weights back: drop the stand-in inputs, restore the original (external) tensors.
    restore_initializers(simplified, hidden)
    return simplified, hidden


def simplify_model(src: Path, dst: Path, config: SimplifyConfig, *, sample: np.ndarray | None = None) -> SimplifyResult:
    """Simplify ``src`` into ``dst`` (same folder, so external data keeps resolving).

    ``dst`` always exists afterwards: the simplified model, or a copy of ``src`` when
    simplification was disabled, failed, changed nothing, or changed the outputs.
    """

    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    base = src.parent
    model = load_onnx(src, load_external_data=False)
    before = describe_model(src, model)

    def keep(reason: str, *, changed: bool = False, diff: float | None = None, hidden: int = 0) -> SimplifyResult:
        if src != dst:
            os.replace(src, dst)
        logger.info("simplification not applied: %s", reason)
        return SimplifyResult(
            backend=config.backend,
            applied=False,
            changed=changed,
            reason=reason,
            before=before,
            after=before,
            weights_kept_out=hidden,
            output_max_abs_diff=diff,
            seconds=time.perf_counter() - start,
        )

    if not config.enabled:
        return keep("disabled (--no-simplify)")

    try:
        simplified, hidden = _simplify_weightless(model, base, config.backend)
    except _SimplifierFailed as exc:
        return keep(f"{config.backend} failed, unsimplified model kept: {exc.reason}", hidden=exc.hidden)
    changed = _signature(simplified) != _signature(model)
    if not changed:
        return keep("no change: the exported graph was already simple", hidden=len(hidden))
    tmp = dst.with_name(dst.name + ".simplified")
    # The hidden weights still point at the external data beside it; the rest goes to a data file of
    # its own only if it would not fit in one file (the pipeline gathers the data files afterwards).
    write_model(simplified, tmp, keep_external=True)
    diff = _compare_outputs(src, tmp, sample)
    if diff is not None and not diff[0]:
        tmp.unlink()
        return keep(
            f"refused: the simplified model's outputs differ from the unsimplified one (max abs diff {diff[1]:.3g})",
            changed=True,
            diff=diff[1],
            hidden=len(hidden),
        )
    os.replace(tmp, dst)
    if src != dst:
        src.unlink()
    after = describe_model(dst)
    return SimplifyResult(
        backend=config.backend,
        applied=True,
        changed=True,
        reason=f"{before.nodes} → {after.nodes} nodes, {before.initializers} → {after.initializers} initializers",
        before=before,
        after=after,
        weights_kept_out=len(hidden),
        output_max_abs_diff=None if diff is None else diff[1],
        seconds=time.perf_counter() - start,
    )


def _signature(model: Any) -> tuple[Any, ...]:
    return (
        tuple(n.op_type for n in model.graph.node),
        len(model.graph.initializer),
        tuple(v.name for v in model.graph.input),
    )


def _compare_outputs(a: Path, b: Path, sample: np.ndarray | None) -> tuple[bool, float] | None:
    """Run both models on ``sample``; (outputs agree, max abs diff). None without a sample."""
    if sample is None:
        return None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    results = []
    for path in (a, b):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        results.append(session.run(None, {name: sample}))
        del session
    worst = 0.0
    agree = True
    for ref, new in zip(results[0], results[1], strict=True):
        ref64, new64 = np.asarray(ref, np.float64), np.asarray(new, np.float64)
        if ref64.shape != new64.shape:
            return False, float("inf")
        diff = float(np.max(np.abs(ref64 - new64))) if ref64.size else 0.0
        scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
        worst = max(worst, diff)
        agree &= diff <= 1e-4 * max(scale, 1e-12) + 1e-6
    return agree, worst
