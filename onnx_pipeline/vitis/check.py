"""Independent checks of a written QDQ model against its scheme's rules (integer types, zero points, scales).

Reads only the written ONNX model (never the quantizer's own records), so a quantizer bug shows up as
a broken rule: opset 17 and static batch 1, topological order, every scale an initializer (a power
of two where the scheme says so), every zero point 0 of the scheme's integer type, Q/DQ pairs sharing
their scale, weights in [-127, 127], int32 biases at input scale x weight scale, Concat/pool/pad
inputs and outputs at one scale, and (XINT8) the DPU's fusion, shift and LeakyReLU rules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from onnx_pipeline.vitis.calibrate import W_MAX, W_MIN
from onnx_pipeline.vitis.plan import FUSED_ACTIVATIONS, WEIGHT_OPS, attrs
from onnx_pipeline.vitis.refine import SHIFT_BIAS_MAX, SHIFT_CUT, SHIFT_READ_MAX, bias_shift_low
from onnx_pipeline.vitis.scheme import XINT8, QuantScheme

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_COMPUTE = ("Conv", "Gemm", "ConvTranspose")
_ALIGNED = ("Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad", "Slice")
_TYPES = {3: "int8", 5: "int16", 6: "int32", 2: "uint8", 4: "uint16"}


def pos_of_scale(scale: float) -> int | None:
    """The position ``p`` with ``scale == 2**-p``, or None when the scale is not a power of two."""
    mantissa, exponent = math.frexp(scale)
    return -(exponent - 1) if mantissa == 0.5 else None


class _Graph:
    """Lookups over one model's graph."""

    def __init__(self, model: Any) -> None:
        """``model``: a ModelProto, or ``ModelParts`` (its weights read where they are mapped, not copied)."""
        from onnx import numpy_helper

        from onnx_pipeline.onnxfile import ModelParts

        parts = model if isinstance(model, ModelParts) else None
        self.model = parts.skeleton if parts is not None else model
        self.graph = self.model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer = {t: n for n in self.graph.node for t in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.graph.node:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)
        self.array: Any = parts.array if parts is not None else (lambda name: numpy_helper.to_array(self.inits[name]))

    def qparams(self, node: Any) -> tuple[float, int, str]:
        """(scale, zero point, zero-point type) of a Q/DQ node."""
        scale = float(self.array(node.input[1]))
        if len(node.input) < 3:
            return scale, 0, "uint8"
        zp = self.inits[node.input[2]]
        return scale, int(self.array(node.input[2])), _TYPES.get(zp.data_type, str(zp.data_type))

    def out_scale(self, t: str) -> float | None:
        """Scale of the QuantizeLinear reading ``t`` (through a fused activation)."""
        users = self.consumers.get(t, [])
        for u in users:
            if u.op_type == "QuantizeLinear" and u.input[1] in self.inits:
                return self.qparams(u)[0]
        if len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS:
            return self.out_scale(users[0].output[0])
        return None

    def role(self, dq_output: str) -> str:
        """ "weight", "bias" or "activation": how a DequantizeLinear's output is consumed."""
        for u in self.consumers.get(dq_output, []):
            if u.op_type in WEIGHT_OPS:
                index = list(u.input).index(dq_output)
                if index in (1, 2):
                    return "weight" if index == 1 else "bias"
        return "activation"


def check_xint8(model: Any) -> list[str]:
    """Every XINT8 rule the written model (ModelProto or ModelParts) breaks (none: a valid power-of-two QDQ model)."""
    return check_qdq(model, XINT8)


def check_qdq(model: Any, scheme: QuantScheme) -> list[str]:
    """Every rule of ``scheme`` the written model (a ModelProto or ModelParts) breaks (empty when it is valid)."""
    g = _Graph(model)
    problems = _check_structure(g, scheme)
    scale_of = _check_qdq_nodes(g, scheme, problems)
    pos = {t: pos_of_scale(s) for t, s in scale_of.items()}
    for n in g.graph.node:
        if n.op_type in _COMPUTE:
            _check_compute(g, scheme, n, scale_of, problems)
        if n.op_type == "Concat" or (n.op_type in _ALIGNED and scheme.tie_layout_ops):
            ins = [scale_of.get(t) for t in (n.input if n.op_type == "Concat" else n.input[:1])]
            o = g.out_scale(n.output[0])
            if o is not None and any(s is not None and s != o for s in ins):
                problems.append(f"{n.name}: {n.op_type} input scales {ins} differ from output scale {o}")
        if scheme.dpu_shifts:
            _check_dpu_node(g, n, pos, problems)
    return problems


def _check_structure(g: _Graph, scheme: QuantScheme) -> list[str]:
    problems: list[str] = []
    model = g.model
    if [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] != [17]:
        problems.append(f"opset is {[(o.domain, o.version) for o in model.opset_import]}, not 17")
    for n in g.graph.node:
        allowed = ("", "ai.onnx", scheme.qdq_domain) if n.op_type in _QDQ else ("", "ai.onnx")
        if n.domain not in allowed:
            problems.append(f"{n.name}: non-default domain {n.domain}")
    for value in g.graph.input:
        if value.name in g.inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]
        if not dims or dims[0] != 1 or not all(isinstance(d, int) and d > 0 for d in dims):
            problems.append(f"input {value.name} is not static batch 1: {dims}")
    seen = {i.name for i in g.graph.input} | set(g.inits) | {""}
    for n in g.graph.node:
        missing = [t for t in n.input if t not in seen]
        if missing:
            problems.append(f"{n.name}: not topologically sorted (uses {missing[0]} before it is made)")
        seen.update(n.output)
    return problems


def _expected_type(scheme: QuantScheme, role: str) -> str:
    if role == "weight":
        return "int8"
    if role == "bias":
        return "int32" if scheme.int32_bias else "int8"
    return scheme.activation_dtype


def _check_qdq_nodes(g: _Graph, scheme: QuantScheme, problems: list[str]) -> dict[str, float]:
    """Per Q/DQ node: initializers, scale rule, zero point and its type, pairs; returns DQ output → scale."""
    scale_of: dict[str, float] = {}
    for n in g.graph.node:
        if n.op_type not in _QDQ:
            continue
        if n.input[1] not in g.inits or len(n.input) < 3 or n.input[2] not in g.inits:
            problems.append(f"{n.name}: scale or zero point is not an initializer")
            continue
        scale, zp, ztype = g.qparams(n)
        if not (math.isfinite(scale) and scale > 0):
            problems.append(f"{n.name}: scale {scale!r} is not a positive finite number")
        elif scheme.scale_rule == "pow2" and pos_of_scale(scale) is None:
            problems.append(f"{n.name}: scale {scale!r} is not a power of 2")
        if zp != 0:
            problems.append(f"{n.name}: zero point {zp} is not 0")
        role = g.role(n.output[0]) if n.op_type == "DequantizeLinear" else "activation"
        if ztype != _expected_type(scheme, role):
            problems.append(f"{n.name}: {role} zero point is {ztype}, not {_expected_type(scheme, role)}")
        if n.op_type == "QuantizeLinear":
            for user in g.consumers.get(n.output[0], []):
                if user.op_type != "DequantizeLinear" or g.qparams(user)[:2] != (scale, zp):
                    problems.append(f"{n.name}: its DequantizeLinear {user.name} does not share its scale")
            continue
        scale_of[n.output[0]] = scale
        if role == "weight" and n.input[0] in g.inits:
            q = g.array(n.input[0])
            if q.min(initial=0) < W_MIN or q.max(initial=0) > W_MAX:
                problems.append(f"{n.name}: weight integers outside [{W_MIN}, {W_MAX}]")
    return scale_of


def _check_compute(g: _Graph, scheme: QuantScheme, n: Any, scale_of: dict[str, float], problems: list[str]) -> None:
    """Fusion with the following activation, and the int32 bias scale rule."""
    users = g.consumers.get(n.output[0], [])
    qdq_after = any(u.op_type == "QuantizeLinear" for u in users)
    activation_after = len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS
    if scheme.fuse_activations and qdq_after:
        q = next(u for u in users if u.op_type == "QuantizeLinear")
        follow = [u for dq in g.consumers.get(q.output[0], []) for u in g.consumers.get(dq.output[0], [])]
        if any(u.op_type in FUSED_ACTIVATIONS for u in follow):
            problems.append(f"{n.name}: a QDQ pair sits between {n.op_type} {n.name} and its activation")
    if not scheme.fuse_activations and activation_after:
        problems.append(f"{n.name}: {scheme.name} puts a QDQ pair on its output before {users[0].op_type}")
    if scheme.int32_bias and len(n.input) > 2 and n.input[2] in scale_of:
        s_in, s_w = scale_of.get(n.input[0]), scale_of.get(n.input[1])
        if s_in is not None and s_w is not None:
            expected = float(np.float32(s_in) * np.float32(s_w))
            if not math.isclose(scale_of[n.input[2]], expected, rel_tol=1e-6):
                got = scale_of[n.input[2]]
                problems.append(f"{n.name}: bias scale {got!r} is not input x weight scale {expected!r}")


def _check_dpu_node(g: _Graph, n: Any, pos: dict[str, int | None], problems: list[str]) -> None:
    """The DPU's shift and LeakyReLU rules, on positions."""
    if n.op_type in _COMPUTE:
        out = g.out_scale(n.output[0])
        ipos, wpos, opos = pos.get(n.input[0]), pos.get(n.input[1]), pos_of_scale(out) if out else None
        if ipos is None or wpos is None or opos is None:
            return
        sc = wpos + ipos - opos
        if not SHIFT_CUT[0] <= sc <= SHIFT_CUT[1]:
            problems.append(f"{n.name}: shift_cut {sc} outside {list(SHIFT_CUT)}")
        bpos = pos.get(n.input[2]) if len(n.input) > 2 else None
        if bpos is not None:
            low = bias_shift_low(sc, any(u.op_type == "LeakyRelu" for u in g.consumers.get(n.output[0], [])))
            sb = wpos + ipos - bpos
            if not low <= sb <= SHIFT_BIAS_MAX:
                problems.append(f"{n.name}: shift_bias {sb} outside [{low}, {SHIFT_BIAS_MAX}]")
    if n.op_type == "Add":
        values = [pos.get(t) for t in n.input]
        known = [p for p in values if p is not None]
        if len(known) == len(values) and max(known) - min(known) > SHIFT_READ_MAX:
            problems.append(f"{n.name}: Add input positions {known} more than {SHIFT_READ_MAX} apart")
    if n.op_type == "LeakyRelu":
        alpha = attrs(n).get("alpha", 0.01)
        if alpha * 256 != round(alpha * 256):
            problems.append(f"{n.name}: LeakyRelu alpha {alpha} is not a multiple of 1/256")
