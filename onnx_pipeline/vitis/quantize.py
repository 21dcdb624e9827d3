"""Power-of-two XINT8 quantization (Vitis AI's DPU scheme), simulated on the CPU as an ONNX QDQ model.

Every quantized tensor is int8, symmetric, zero point 0, scale ``2**-pos`` ("fix position" ``pos``).
Positions come from MinMSE: the no-overflow position and a few finer ones are tried, on a
histogram of the calibration activations, and exactly on weights. The positions are then moved to
satisfy the DPU compiler's integer-pipeline constraints, the rules of AMD Quark's
``quark/onnx/postprocess/refinement/refine.py`` (``QuantPosManager``):

- Conv/Gemm: ``shift_cut = wpos + ipos - opos`` in [0, 16] (wpos moved);
  ``shift_bias = wpos + ipos - bpos`` in [min(0, -(24 - (8 + shift_cut))), 15] (bpos moved;
  lower bound 0 when a LeakyRelu follows).
- Add: ``max(ipos) - min(ipos) <= 7`` (the larger moved down), ``min(ipos) - opos`` in [-7, 25].
- Concat: inputs and output at the smallest position; MaxPool/AveragePool/GlobalAveragePool, Pad,
  Slice and pure layout ops: output position = input position.

The DPU fuses Conv/Gemm with a following ReLU/LeakyReLU/ReLU6, so no QDQ pair sits between them.
Weights and biases are int8 initializers behind a DequantizeLinear (weights in [-127, 127]); bias
keeps its own 8-bit position as the DPU does (not onnxruntime's int32 bias). LeakyRelu's alpha is
rounded to the DPU's 26/256-style fixed point ``round(256 * alpha) / 256``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.errors import BundleError
from onnx_pipeline.runtime.session import create_session
from onnx_pipeline.vitis.graph import ModelParts, shapes, topological_sort, write_model, write_model_external

log = logging.getLogger(__name__)

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FUSED_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip")
#: ops whose output keeps the input's position (pooling, padding, slicing, layout)
SAME_POSITION_OPS = (
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Pad",
    "Slice",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Relu",
    "Resize",
    "Upsample",
    "DepthToSpace",
    "SpaceToDepth",
)
#: ops whose output gets its own MinMSE position
OWN_POSITION_OPS = (
    *WEIGHT_OPS,
    "Add",
    "Sub",
    "Mul",
    "Concat",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "BatchNormalization",
    "Sum",
)
QUANTIZED_OPS = OWN_POSITION_OPS + SAME_POSITION_OPS
ACT_MIN, ACT_MAX = -128, 127
W_MIN, W_MAX = -127, 127
HIST_BINS = 1 << 14
SHIFT_CUT = (0, 16)
SHIFT_BIAS_MAX = 15
SHIFT_READ_MAX = 7
SHIFT_WRITE = (-7, 25)
MAX_REFINE_LOOPS = 5


@dataclass
class Histogram:
    """Symmetric histogram of one tensor over [-R, R], R a power of two that doubles as values grow."""

    bins: int = HIST_BINS
    radius: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    amax: float = 0.0

    def add(self, values: np.ndarray) -> None:
        """Accumulate ``values`` (any shape)."""
        flat = values.reshape(-1)
        amax = float(np.max(np.abs(flat))) if flat.size else 0.0
        if not math.isfinite(amax):
            raise BundleError("a calibration activation is not finite (inf/NaN): check the model and inputs")
        self.amax = max(self.amax, amax)
        if amax == 0.0 and self.radius == 0.0:
            self.counts[self.bins // 2] += flat.size
            return
        needed = 2.0 ** math.ceil(math.log2(amax)) if amax > 0 else self.radius
        if self.radius == 0.0:
            self.radius = needed
        while needed > self.radius:
            half = self.counts.reshape(self.bins // 2, 2).sum(axis=1)
            self.counts = np.zeros(self.bins, dtype=np.int64)
            self.counts[self.bins // 4 : self.bins // 4 + self.bins // 2] = half
            self.radius *= 2.0
        scale = np.float32(self.bins / (2.0 * self.radius))
        index = ((flat + np.float32(self.radius)) * scale).astype(np.int64)
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def best_position(self) -> tuple[int, int, dict[int, float]]:
        """(MinMSE position, no-overflow position, mse per candidate) over the accumulated values."""
        p0 = no_overflow_position(self.amax, ACT_MAX)
        if self.radius == 0.0:
            return p0, p0, {p0: 0.0}
        width = 2.0 * self.radius / self.bins
        centers = -self.radius + (np.arange(self.bins) + 0.5) * width
        used = self.counts > 0
        c, n = centers[used], self.counts[used].astype(np.float64)
        errors = {}
        for pos in range(p0 - 1, p0 + 4):
            step = 2.0**-pos
            q = np.clip(np.rint(c / step), ACT_MIN, ACT_MAX) * step
            errors[pos] = float(np.sum(n * (c - q) ** 2) / max(n.sum(), 1.0))
        best = min(errors, key=lambda p: (errors[p], p))
        return best, p0, errors


def no_overflow_position(amax: float, qmax: int) -> int:
    """Largest position whose range still holds ``amax`` (``amax * 2**pos <= qmax``)."""
    if amax <= 0.0 or not math.isfinite(amax):
        return 7
    return math.floor(math.log2(qmax / amax))


def quantize_array(values: np.ndarray, pos: int, qmin: int, qmax: int) -> np.ndarray:
    """int8 values of ``values`` at ``pos``: round half to even (as QuantizeLinear), saturate.

    Works in chunks so a 400 MB weight needs a few MB of scratch, not two float copies.
    """
    flat = values.reshape(-1)
    out = np.empty(flat.size, dtype=np.int8)
    scale = np.float32(2.0**pos)
    chunk = 1 << 22
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk].astype(np.float32) * scale
        np.rint(part, out=part)
        np.clip(part, qmin, qmax, out=part)
        out[start : start + chunk] = part
    return out.reshape(values.shape)


def weight_position(values: np.ndarray) -> tuple[int, int, dict[int, float]]:
    """Exact MinMSE position of a weight tensor over the no-overflow one and finer ones."""
    flat = values.reshape(-1).astype(np.float32, copy=False)
    amax = float(np.max(np.abs(flat))) if flat.size else 0.0
    p0 = no_overflow_position(amax, W_MAX)
    errors: dict[int, float] = {}
    chunk = 1 << 22
    for pos in range(p0, p0 + 4):
        scale = np.float32(2.0**pos)
        inv = np.float32(2.0**-pos)
        total = 0.0
        for start in range(0, flat.size, chunk):
            part = flat[start : start + chunk]
            q = np.rint(part * scale)
            np.clip(q, W_MIN, W_MAX, out=q)
            q *= inv
            q -= part
            total += float(np.dot(q, q))
        errors[pos] = total / max(flat.size, 1)
        if pos > p0 and errors[pos] > errors[pos - 1]:
            break  # the error is unimodal in the position: finer ones only clip more
    best = min(errors, key=lambda p: (errors[p], p))
    return best, p0, errors


@dataclass(frozen=True)
class QuantParam:
    """One quantized tensor: its final position and how it was chosen."""

    tensor: str
    kind: str  # "activation", "weight" or "bias"
    position: int
    minmse_position: int
    no_overflow_position: int
    adjusted_by: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        return float(2.0**-self.position)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scale": self.scale,
            "position": self.position,
            "zero_point": 0,
            "dtype": "int8",
            "minmse_position": self.minmse_position,
            "no_overflow_position": self.no_overflow_position,
            "adjusted_by": list(self.adjusted_by),
        }


@dataclass(frozen=True)
class XInt8Result:
    """What the quantizer wrote and measured."""

    path: Path
    params: dict[str, QuantParam]
    adjustments: tuple[str, ...]
    reference_outputs: dict[str, np.ndarray]  # fp32 outputs on the held-out inputs
    output_names: tuple[str, ...]
    calibration_samples: int
    seconds: dict[str, float]


class _Positions:
    """Tensor positions with alignment groups (tensors that must share a position)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.pos: dict[str, int] = {}
        self.log: list[str] = []
        self.moved: dict[str, list[str]] = {}

    def find(self, t: str) -> str:
        root = t
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        self.parent[t] = root
        return root

    def tie(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        pa, pb = self.pos.get(ra), self.pos.pop(rb, None)
        if pb is not None:
            self.pos[ra] = pb if pa is None else min(pa, pb)

    def get(self, t: str) -> int:
        return self.pos[self.find(t)]

    def has(self, t: str) -> bool:
        return self.find(t) in self.pos

    def set(self, t: str, value: int, rule: str) -> None:
        root = self.find(t)
        old = self.pos.get(root)
        if old != value:
            self.pos[root] = value
            self.log.append(f"{rule}: {t} position {old} → {value}")
            self.moved.setdefault(t, []).append(rule)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_relu6(node: Any, parts: ModelParts) -> bool:
    if node.op_type != "Clip" or len(node.input) < 3:
        return False
    low, high = parts.array(node.input[1]), parts.array(node.input[2])
    return low is not None and high is not None and float(low) == 0.0 and float(high) == 6.0


class _Plan:
    """Which tensors are quantized, and how positions relate, for one skeleton graph."""

    def __init__(self, parts: ModelParts) -> None:
        graph = parts.skeleton.graph
        self.parts = parts
        self.inits = {i.name for i in graph.initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.inits]
        self.consumers: dict[str, list[Any]] = {}
        self.producer: dict[str, Any] = {}
        for node in graph.node:
            for t in node.input:
                self.consumers.setdefault(t, []).append(node)
            for t in node.output:
                self.producer[t] = node
        self.graph_outputs = {o.name for o in graph.output}
        self.fused: dict[str, str] = {}  # Conv/Gemm output → activation output that carries its QDQ
        self.quantized: list[str] = []  # activation tensors that get a QDQ pair, in graph order
        self.own: set[str] = set()  # tensors whose position comes from their own statistics
        self.weights: dict[str, str] = {}  # weight/bias initializer → "weight" | "bias"
        self.compute: list[Any] = []  # Conv/Gemm/MatMul nodes with quantized weights
        self._plan(graph)

    def _is_quantized_op(self, node: Any) -> bool:
        if node.op_type == "Clip":
            return _is_relu6(node, self.parts)
        if node.op_type == "MatMul":
            return node.input[1] in self.inits
        return node.op_type in QUANTIZED_OPS

    def _plan(self, graph: Any) -> None:
        seen: set[str] = set()

        def add(t: str, own: bool) -> None:
            if t and t not in seen and t not in self.inits:
                seen.add(t)
                self.quantized.append(t)
                if own:
                    self.own.add(t)

        for node in graph.node:
            if not self._is_quantized_op(node):
                continue
            # inputs coming from the graph or from CPU ops get their own QDQ
            for i, t in enumerate(node.input):
                if not t or t in self.inits:
                    continue
                if node.op_type in WEIGHT_OPS and i > 0:
                    continue
                src = self.producer.get(t)
                if src is None or not self._is_quantized_op(src):
                    add(t, own=True)
            if node.op_type in WEIGHT_OPS:
                w = node.input[1] if len(node.input) > 1 else ""
                if w not in self.inits:
                    raise BundleError(f"{node.op_type} '{node.name}' has a computed weight: not supported on the DPU")
                self.weights[w] = "weight"
                if len(node.input) > 2 and node.input[2]:
                    if node.input[2] not in self.inits:
                        raise BundleError(f"{node.op_type} '{node.name}' has a computed bias")
                    self.weights[node.input[2]] = "bias"
                self.compute.append(node)
                out = node.output[0]
                users = self.consumers.get(out, [])
                if (
                    node.op_type != "MatMul"
                    and len(users) == 1
                    and out not in self.graph_outputs
                    and users[0].op_type in FUSED_ACTIVATIONS
                    and self._is_quantized_op(users[0])
                ):
                    self.fused[out] = users[0].output[0]
                    continue
            if node.op_type in FUSED_ACTIVATIONS and node.input[0] in self.fused:
                add(node.output[0], own=True)
                continue
            for t in node.output:
                add(t, own=node.op_type not in SAME_POSITION_OPS)

    def input_tensor(self, t: str) -> str:
        """The quantized tensor whose position a consumer of ``t`` reads (follows no fusion)."""
        return t


def _augment(parts: ModelParts, tensors: list[str]) -> Any:
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(parts.skeleton)
    known = {o.name for o in model.graph.output}
    elem = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for t in tensors:
        if t not in known:
            model.graph.output.append(helper.make_tensor_value_info(t, elem.get(t, onnx.TensorProto.FLOAT), None))
    return model


def quantize_xint8(
    parts: ModelParts,
    calibration: np.ndarray,
    heldout: np.ndarray | None,
    out_path: Path,
    *,
    scratch_dir: Path,
) -> XInt8Result:
    """Calibrate on ``calibration`` (N, C, H, W), write the power-of-two QDQ model to ``out_path``.

    ``parts`` is the static opset-17 fp32 model; its weights are replaced by int8 arrays in place
    (the float copy is released to keep peak memory at about one model). The fp32 outputs on
    ``heldout`` are computed in the same session, for the fidelity report.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    plan = _Plan(parts)
    input_name = plan.graph_inputs[0] if plan.graph_inputs else ""
    if len(plan.graph_inputs) != 1:
        raise BundleError(f"the Vitis AI bundle needs a single-input model, this one has {plan.graph_inputs}")
    expected = shapes(parts.skeleton)[input_name]
    calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != len(expected) or tuple(calibration.shape[1:]) != tuple(expected[1:]):
        raise BundleError(f"calibration samples are {calibration.shape[1:]}, the model takes {expected[1:]}")
    if len(calibration) == 0:
        raise BundleError("no calibration samples: give --calibration-images or allow synthetic calibration")

    # 1. activation histograms and fp32 reference outputs, one session with the needed extra outputs
    stats_tensors = [t for t in plan.quantized if t in plan.own and t != input_name]
    calib_path = scratch_dir / "calibration_model.onnx"
    write_model_external(_augment(parts, stats_tensors), parts.weights, calib_path)
    session = create_session(calib_path, what="the calibration model")
    hists = {t: Histogram() for t in plan.quantized if t in plan.own}
    output_names = tuple(o.name for o in parts.skeleton.graph.output)
    for sample in calibration:
        batch = sample[None]
        if input_name in hists:
            hists[input_name].add(batch)
        values = session.run(stats_tensors, {input_name: batch})
        for t, v in zip(stats_tensors, values, strict=True):
            hists[t].add(v)
    reference: dict[str, list[np.ndarray]] = {n: [] for n in output_names}
    if heldout is not None:
        for sample in np.asarray(heldout, dtype=np.float32):
            for n, v in zip(output_names, session.run(list(output_names), {input_name: sample[None]}), strict=True):
                reference[n].append(v)
    del session
    calib_path.unlink(missing_ok=True)
    Path(f"{calib_path}.data").unlink(missing_ok=True)
    timings["calibrate"] = time.perf_counter() - start

    # 2. positions: MinMSE, then alignment ties and the DPU's shift constraints
    t1 = time.perf_counter()
    positions = _Positions()
    minmse: dict[str, tuple[int, int]] = {}
    for t, hist in hists.items():
        best, p0, _ = hist.best_position()
        positions.pos[t] = best
        positions.parent[t] = t
        minmse[t] = (best, p0)
    graph = parts.skeleton.graph
    for node in graph.node:
        if node.op_type in SAME_POSITION_OPS and node.input and node.input[0] in plan.quantized:
            for out in node.output:
                if out in plan.quantized and out not in plan.own:
                    positions.tie(node.input[0], out)
        if node.op_type == "Concat" and plan._is_quantized_op(node):
            for t in node.input:
                if t in plan.quantized:
                    positions.tie(node.output[0], t)
    weight_pos: dict[str, int] = {}
    weight_minmse: dict[str, tuple[int, int]] = {}
    for name in plan.weights:
        values = parts.weights[name] if name in parts.weights else parts.array(name)
        assert values is not None  # plan.weights only holds initializers
        best, p0, _ = weight_position(values)
        weight_pos[name] = best
        weight_minmse[name] = (best, p0)
    wmoved: dict[str, list[str]] = {}
    _refine(plan, positions, weight_pos, wmoved)
    timings["positions"] = time.perf_counter() - t1

    # 3. the QDQ graph: int8 weights in place of the float ones, QDQ pairs on activations
    t2 = time.perf_counter()
    params: dict[str, QuantParam] = {}
    for t in plan.quantized:
        mm = minmse.get(t)
        root_mm = minmse.get(positions.find(t), (positions.get(t), positions.get(t)))
        params[t] = QuantParam(
            tensor=t,
            kind="activation",
            position=positions.get(t),
            minmse_position=(mm or root_mm)[0],
            no_overflow_position=(mm or root_mm)[1],
            adjusted_by=_why_moved(t, positions, minmse),
        )
    for name, kind in plan.weights.items():
        params[name] = QuantParam(
            tensor=name,
            kind=kind,
            position=weight_pos[name],
            minmse_position=weight_minmse[name][0],
            no_overflow_position=weight_minmse[name][1],
            adjusted_by=tuple(wmoved.get(name, [])),
        )
    qweights = _build_qdq_graph(parts, plan, params)
    topological_sort(parts.skeleton.graph)
    write_model(parts.skeleton, qweights, out_path)
    parts.weights = qweights  # the float arrays are no longer referenced
    timings["write"] = time.perf_counter() - t2
    log.info("XINT8: %d activation and %d weight tensors quantized", len(plan.quantized), len(plan.weights))
    return XInt8Result(
        path=out_path,
        params=params,
        adjustments=tuple(positions.log + [m for ms in wmoved.values() for m in ms]),
        reference_outputs={n: np.concatenate(v) for n, v in reference.items() if v},
        output_names=output_names,
        calibration_samples=len(calibration),
        seconds=timings,
    )


def _why_moved(t: str, positions: _Positions, minmse: dict[str, tuple[int, int]]) -> tuple[str, ...]:
    rules = list(positions.moved.get(t, []))
    if not rules and t in minmse and positions.get(t) != minmse[t][0]:
        rules.append("align")  # tied to a Concat group (or pooled/layout chain) at a smaller position
    return tuple(rules)


def _opos_tensor(plan: _Plan, node: Any) -> str:
    out = node.output[0]
    return plan.fused.get(out, out)


def _refine(plan: _Plan, positions: _Positions, wpos: dict[str, int], wmoved: dict[str, list[str]]) -> None:
    """Move positions until the DPU compiler's constraints hold (Quark's refine order, ≤ 5 loops)."""
    graph = plan.parts.skeleton.graph
    for _ in range(MAX_REFINE_LOOPS):
        changed = False
        for node in graph.node:
            if node.op_type in ("Add", "Sub") and plan._is_quantized_op(node):
                ins = [t for t in node.input if t in plan.quantized]
                if len(ins) == 2:
                    in_pos = [positions.get(t) for t in ins]
                    if max(in_pos) - min(in_pos) > SHIFT_READ_MAX:
                        hi = ins[int(np.argmax(in_pos))]
                        positions.set(hi, min(in_pos) + SHIFT_READ_MAX, "shift_read")
                        changed = True
                    out = node.output[0]
                    if out in plan.quantized:
                        sw = min(positions.get(t) for t in ins) - positions.get(out)
                        if not SHIFT_WRITE[0] <= sw <= SHIFT_WRITE[1]:
                            target = min(max(sw, SHIFT_WRITE[0]), SHIFT_WRITE[1])
                            positions.set(out, min(positions.get(t) for t in ins) - target, "shift_write")
                            changed = True
        for node in plan.compute:
            x, w = node.input[0], node.input[1]
            o = _opos_tensor(plan, node)
            if x not in plan.quantized or o not in plan.quantized:
                continue
            ipos, opos = positions.get(x), positions.get(o)
            sc = wpos[w] + ipos - opos
            if not SHIFT_CUT[0] <= sc <= SHIFT_CUT[1]:
                new = min(max(sc, SHIFT_CUT[0]), SHIFT_CUT[1]) + opos - ipos
                wmoved.setdefault(w, []).append(f"shift_cut: {w} position {wpos[w]} → {new}")
                wpos[w] = new
                sc = new + ipos - opos
                changed = True
            if len(node.input) > 2 and node.input[2]:
                b = node.input[2]
                users = plan.consumers.get(node.output[0], [])
                low = 0 if any(u.op_type == "LeakyRelu" for u in users) else min(0, -(24 - (8 + sc)))
                sb = wpos[w] + ipos - wpos[b]
                if not low <= sb <= SHIFT_BIAS_MAX:
                    new = wpos[w] + ipos - min(max(sb, low), SHIFT_BIAS_MAX)
                    wmoved.setdefault(b, []).append(f"shift_bias: {b} position {wpos[b]} → {new}")
                    wpos[b] = new
                    changed = True
        if not changed:
            return
    log.warning("XINT8 position refinement did not settle in %d loops", MAX_REFINE_LOOPS)


def _build_qdq_graph(parts: ModelParts, plan: _Plan, params: dict[str, QuantParam]) -> dict[str, np.ndarray]:
    """Rewrite the skeleton into the QDQ model; returns its large int8 initializers."""
    from onnx import TensorProto, helper, numpy_helper

    graph = parts.skeleton.graph
    new_inits: list[Any] = []
    qweights: dict[str, np.ndarray] = {}
    new_nodes: list[Any] = []

    def scale_zp(t: str, pos: int) -> tuple[str, str]:
        s, z = f"{t}_scale", f"{t}_zero_point"
        new_inits.append(numpy_helper.from_array(np.array(2.0**-pos, dtype=np.float32), s))
        new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), z))
        return s, z

    # weights and biases: int8 initializer → DequantizeLinear → the original name
    keep_inits = []
    for init in graph.initializer:
        kind = plan.weights.get(init.name)
        if kind is None:
            keep_inits.append(init)
            continue
        p = params[init.name]
        values = parts.weights.pop(init.name) if init.name in parts.weights else numpy_helper.to_array(init)
        qmin = W_MIN if kind == "weight" else ACT_MIN
        q = quantize_array(values, p.position, qmin, W_MAX)
        del values
        qname = f"{init.name}_quantized"
        if q.size > 1024:
            qweights[qname] = q
            meta = TensorProto()
            meta.name = qname
            meta.data_type = TensorProto.INT8
            meta.dims.extend(q.shape)
            new_inits.append(meta)
        else:
            new_inits.append(numpy_helper.from_array(q, qname))
        s, z = scale_zp(init.name, p.position)
        new_nodes.append(helper.make_node("DequantizeLinear", [qname, s, z], [init.name], name=f"{init.name}_DQ"))
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)

    # activations: producer writes t__float → Q → t__int8 → DQ → t (graph inputs: consumers rewired)
    rename: dict[str, str] = {}
    inputs = set(plan.graph_inputs)
    for t in plan.quantized:
        p = params[t]
        s, z = scale_zp(t, p.position)
        if t in inputs:
            src, dst = t, f"{t}__dequantized"
            rename[t] = dst
        else:
            src, dst = f"{t}__float", t
            plan.producer[t].output[list(plan.producer[t].output).index(t)] = src
        new_nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [f"{t}__int8"], name=f"{t}_Q"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{t}__int8", s, z], [dst], name=f"{t}_DQ"))
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t in rename:
                node.input[i] = rename[t]
        if node.op_type == "LeakyRelu":
            alpha = _attrs(node).get("alpha", 0.01)
            for attr in node.attribute:
                if attr.name == "alpha":
                    attr.f = round(256 * alpha) / 256
            if not any(a.name == "alpha" for a in node.attribute):
                node.attribute.append(helper.make_attribute("alpha", round(256 * alpha) / 256))
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    del graph.value_info[:]
    parts.skeleton.producer_name = "onnx-pipeline (vitis xint8)"
    remaining = {name: parts.weights[name] for name in (i.name for i in keep_inits) if name in parts.weights}
    return {**remaining, **qweights}


# --- independent checks of a written QDQ model -----------------------------------------------------


def _pos_of_scale(scale: float) -> int | None:
    mantissa, exponent = math.frexp(scale)
    return -(exponent - 1) if mantissa == 0.5 else None


def check_xint8(model: Any) -> list[str]:
    """Every XINT8 rule the written model breaks (empty when it is a valid power-of-two QDQ model)."""
    from onnx import numpy_helper

    graph = model.graph
    problems: list[str] = []
    inits = {i.name: i for i in graph.initializer}
    producer = {t: n for n in graph.node for t in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    if [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] != [17]:
        problems.append(f"opset is {[(o.domain, o.version) for o in model.opset_import]}, not 17")
    for n in graph.node:
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{n.name}: non-default domain {n.domain}")
    for value in graph.input:
        if value.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]
        if not dims or dims[0] != 1 or not all(isinstance(d, int) and d > 0 for d in dims):
            problems.append(f"input {value.name} is not static batch 1: {dims}")
    seen = {i.name for i in graph.input} | set(inits) | {""}
    for n in graph.node:
        missing = [t for t in n.input if t not in seen]
        if missing:
            problems.append(f"{n.name}: not topologically sorted (uses {missing[0]} before it is made)")
        seen.update(n.output)

    def qparams(node: Any) -> tuple[int | None, int]:
        scale = float(numpy_helper.to_array(inits[node.input[1]]))
        zp = int(numpy_helper.to_array(inits[node.input[2]])) if len(node.input) > 2 else 0
        return _pos_of_scale(scale), zp

    pos_of: dict[str, int] = {}  # dequantized tensor → its position
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.input[1] not in inits or (len(n.input) > 2 and n.input[2] not in inits):
            problems.append(f"{n.name}: scale or zero point is not an initializer")
            continue
        pos, zp = qparams(n)
        if pos is None:
            problems.append(f"{n.name}: scale {float(numpy_helper.to_array(inits[n.input[1]]))!r} is not a power of 2")
        if zp != 0:
            problems.append(f"{n.name}: zero point {zp} is not 0")
        if len(n.input) > 2 and inits[n.input[2]].data_type != 3:  # INT8
            problems.append(f"{n.name}: zero point is not int8")
        if n.op_type == "QuantizeLinear":
            for user in consumers.get(n.output[0], []):
                if user.op_type != "DequantizeLinear" or qparams(user) != (pos, zp):
                    problems.append(f"{n.name}: its DequantizeLinear {user.name} does not share its scale")
        elif pos is not None:
            pos_of[n.output[0]] = pos
            if n.input[0] in inits:
                q = numpy_helper.to_array(inits[n.input[0]])
                users = consumers.get(n.output[0], [])
                is_weight = any(u.op_type in WEIGHT_OPS and list(u.input).index(n.output[0]) == 1 for u in users)
                if is_weight and (q.min(initial=0) < W_MIN or q.max(initial=0) > W_MAX):
                    problems.append(f"{n.name}: weight integers outside [{W_MIN}, {W_MAX}]")

    def out_pos(t: str) -> int | None:
        users = consumers.get(t, [])
        for u in users:
            if u.op_type == "QuantizeLinear":
                return qparams(u)[0]
        if len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS:
            return out_pos(users[0].output[0])
        return None

    for n in graph.node:
        if n.op_type in FUSED_ACTIVATIONS:
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                qnode = producer.get(src.input[0])
                before = producer.get(qnode.input[0]) if qnode is not None else None
                if before is not None and before.op_type in ("Conv", "Gemm", "ConvTranspose"):
                    problems.append(f"{n.name}: a QDQ pair sits between {before.op_type} {before.name} and it")
        if n.op_type in ("Conv", "Gemm", "ConvTranspose"):
            ipos, wpos, opos = pos_of.get(n.input[0]), pos_of.get(n.input[1]), out_pos(n.output[0])
            if None in (ipos, wpos, opos):
                continue
            assert ipos is not None and wpos is not None and opos is not None
            sc = wpos + ipos - opos
            if not SHIFT_CUT[0] <= sc <= SHIFT_CUT[1]:
                problems.append(f"{n.name}: shift_cut {sc} outside {list(SHIFT_CUT)}")
            if len(n.input) > 2 and n.input[2] in pos_of:
                leaky = any(u.op_type == "LeakyRelu" for u in consumers.get(n.output[0], []))
                low = 0 if leaky else min(0, -(24 - (8 + sc)))
                sb = wpos + ipos - pos_of[n.input[2]]
                if not low <= sb <= SHIFT_BIAS_MAX:
                    problems.append(f"{n.name}: shift_bias {sb} outside [{low}, {SHIFT_BIAS_MAX}]")
        if n.op_type == "Add":
            ipos_list = [pos_of.get(t) for t in n.input]
            if None not in ipos_list:
                values = [p for p in ipos_list if p is not None]
                if max(values) - min(values) > SHIFT_READ_MAX:
                    problems.append(f"{n.name}: Add input positions {values} more than {SHIFT_READ_MAX} apart")
        if n.op_type in ("Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad", "Slice"):
            ins = [pos_of.get(t) for t in (n.input if n.op_type == "Concat" else n.input[:1])]
            o = out_pos(n.output[0])
            if o is not None and any(p is not None and p != o for p in ins):
                problems.append(f"{n.name}: {n.op_type} input positions {ins} differ from output position {o}")
        if n.op_type == "LeakyRelu":
            alpha = _attrs(n).get("alpha", 0.01)
            if alpha * 256 != round(alpha * 256):
                problems.append(f"{n.name}: LeakyRelu alpha {alpha} is not a multiple of 1/256")
    return problems
