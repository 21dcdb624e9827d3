"""Writing the QDQ graph: integer weights behind a DequantizeLinear, a QDQ pair on every planned activation.

Weights and biases become integer initializers (int8 in [-127, 127]; int8 or int32 biases) behind a
DequantizeLinear that restores the original name; each planned activation ``t`` is rewritten as
producer → ``t__float`` → QuantizeLinear → DequantizeLinear → ``t``. int16 activations use
onnxruntime's ``com.microsoft`` QuantizeLinear/DequantizeLinear (the default domain has int16 only
from opset 21).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_pipeline.vitis.calibrate import ACT_MIN, W_MAX, W_MIN, quantize_scaled
from onnx_pipeline.vitis.graph import ModelParts
from onnx_pipeline.vitis.plan import QuantPlan, attrs
from onnx_pipeline.vitis.scheme import QuantScheme

INT32_RANGE = (-(2**31), 2**31 - 1)
_NUMPY = {"int8": np.int8, "int16": np.int16, "int32": np.int32}
_LARGE = 1024


@dataclass(frozen=True)
class QuantParam:
    """One quantized tensor: its scale (and position, for power-of-two schemes) and how it was chosen."""

    tensor: str
    kind: str  # "activation", "weight" or "bias"
    scale: float
    dtype: str = "int8"
    position: int | None = None
    minmse_position: int | None = None
    no_overflow_position: int | None = None
    #: calibrated largest magnitude (float-scale schemes)
    amax: float | None = None
    adjusted_by: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "scale": self.scale,
            "position": self.position,
            "zero_point": 0,
            "dtype": self.dtype,
            "minmse_position": self.minmse_position,
            "no_overflow_position": self.no_overflow_position,
            "adjusted_by": list(self.adjusted_by),
        }
        if self.amax is not None:
            out["amax"] = self.amax
        return out


def build_qdq_graph(
    parts: ModelParts, plan: QuantPlan, params: dict[str, QuantParam], scheme: QuantScheme
) -> dict[str, np.ndarray]:
    """Rewrite the skeleton into the QDQ model in place; returns its large initializers (integer weights)."""
    from onnx import helper

    graph = parts.skeleton.graph
    new_inits: list[Any] = []
    new_nodes: list[Any] = []
    qweights, keep_inits = _quantize_initializers(parts, plan, params, new_inits, new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    _insert_activation_qdq(plan, params, scheme, new_inits, new_nodes)
    if scheme.dpu_shifts:
        _dpu_leaky_alpha(graph)
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    del graph.value_info[:]
    if scheme.qdq_domain and not any(o.domain == scheme.qdq_domain for o in parts.skeleton.opset_import):
        parts.skeleton.opset_import.append(helper.make_opsetid(scheme.qdq_domain, 1))
    parts.skeleton.producer_name = f"onnx-pipeline (vitis {scheme.name.lower()})"
    remaining = {name: parts.weights[name] for name in (i.name for i in keep_inits) if name in parts.weights}
    return {**remaining, **qweights}


def _scale_zp(t: str, scale: float, dtype: str, new_inits: list[Any]) -> tuple[str, str]:
    from onnx import numpy_helper

    s, z = f"{t}_scale", f"{t}_zero_point"
    new_inits.append(numpy_helper.from_array(np.array(scale, dtype=np.float32), s))
    new_inits.append(numpy_helper.from_array(np.array(0, dtype=_NUMPY[dtype]), z))
    return s, z


def _quantize_initializers(
    parts: ModelParts, plan: QuantPlan, params: dict[str, QuantParam], new_inits: list[Any], new_nodes: list[Any]
) -> tuple[dict[str, np.ndarray], list[Any]]:
    """Weights and biases: integer initializer → DequantizeLinear → the original name."""
    from onnx import TensorProto, helper, numpy_helper

    qweights: dict[str, np.ndarray] = {}
    keep_inits = []
    for init in parts.skeleton.graph.initializer:
        kind = plan.weights.get(init.name)
        if kind is None:
            keep_inits.append(init)
            continue
        p = params[init.name]
        values = parts.weights.pop(init.name) if init.name in parts.weights else numpy_helper.to_array(init)
        qmin, qmax = INT32_RANGE if p.dtype == "int32" else ((W_MIN if kind == "weight" else ACT_MIN), W_MAX)
        q = quantize_scaled(values, p.scale, qmin, qmax, _NUMPY[p.dtype])
        del values
        qname = f"{init.name}_quantized"
        if q.size > _LARGE:
            qweights[qname] = q
            meta = TensorProto()
            meta.name = qname
            meta.data_type = helper.np_dtype_to_tensor_dtype(q.dtype)
            meta.dims.extend(q.shape)
            new_inits.append(meta)
        else:
            new_inits.append(numpy_helper.from_array(q, qname))
        s, z = _scale_zp(init.name, p.scale, p.dtype, new_inits)
        new_nodes.append(helper.make_node("DequantizeLinear", [qname, s, z], [init.name], name=f"{init.name}_DQ"))
    return qweights, keep_inits


def _insert_activation_qdq(
    plan: QuantPlan, params: dict[str, QuantParam], scheme: QuantScheme, new_inits: list[Any], new_nodes: list[Any]
) -> None:
    """Producer writes t__float → Q → t__int → DQ → t (graph inputs: their consumers are rewired)."""
    from onnx import helper

    rename: dict[str, str] = {}
    inputs = set(plan.graph_inputs)
    domain = scheme.qdq_domain
    for t in plan.quantized:
        p = params[t]
        s, z = _scale_zp(t, p.scale, p.dtype, new_inits)
        if t in inputs:
            src, dst = t, f"{t}__dequantized"
            rename[t] = dst
        else:
            src, dst = f"{t}__float", t
            plan.producer[t].output[list(plan.producer[t].output).index(t)] = src
        qt = f"{t}__{p.dtype}"
        new_nodes.append(helper.make_node("QuantizeLinear", [src, s, z], [qt], name=f"{t}_Q", domain=domain))
        new_nodes.append(helper.make_node("DequantizeLinear", [qt, s, z], [dst], name=f"{t}_DQ", domain=domain))
    for node in plan.parts.skeleton.graph.node:
        for i, t in enumerate(node.input):
            if t in rename:
                node.input[i] = rename[t]


def _dpu_leaky_alpha(graph: Any) -> None:
    """LeakyRelu's alpha as the DPU computes it: ``round(256 * alpha) / 256``."""
    from onnx import helper

    for node in graph.node:
        if node.op_type != "LeakyRelu":
            continue
        alpha = round(256 * attrs(node).get("alpha", 0.01)) / 256
        for attr in node.attribute:
            if attr.name == "alpha":
                attr.f = alpha
        if not any(a.name == "alpha" for a in node.attribute):
            node.attribute.append(helper.make_attribute("alpha", alpha))
