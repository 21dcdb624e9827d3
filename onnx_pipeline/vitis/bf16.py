"""A CPU simulation of the compiler's FP32 → BF16 conversion (VAIML's ``enable_f32_to_bf16_conversion``).

Weights are rounded to bfloat16 (round to nearest even) and every float activation passes through a
Cast to BFLOAT16 and back, so onnxruntime's CPU provider computes what a BF16 datapath stores. The
NPU accumulates in higher precision than this per-operator rounding implies, so the figures are a
conservative estimate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnx_pipeline.vitis.graph import ModelParts


def round_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isfinite(values), out, values).astype(np.float32)


def to_bf16_simulation(parts: ModelParts) -> dict[str, np.ndarray]:
    """Rewrite the skeleton in place into the BF16 simulation; returns its (rounded) large weights."""
    from onnx import TensorProto, helper, numpy_helper

    graph = parts.skeleton.graph
    weights = {name: round_to_bf16(array) for name, array in parts.weights.items() if array.dtype == np.float32}
    for init in graph.initializer:
        if init.name not in parts.weights and init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(round_to_bf16(numpy_helper.to_array(init)), init.name))
    floats = _float_tensors(parts.skeleton)
    new_nodes: list[Any] = []
    for node in graph.node:
        new_nodes.append(node)
        for i, t in enumerate(node.output):
            if t not in floats:
                continue
            node.output[i] = f"{t}__fp32"
            new_nodes.append(helper.make_node("Cast", [f"{t}__fp32"], [f"{t}__bf16"], to=TensorProto.BFLOAT16))
            new_nodes.append(helper.make_node("Cast", [f"{t}__bf16"], [t], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    parts.skeleton.producer_name = "onnx-pipeline (bf16 simulation)"
    return {**parts.weights, **weights}


def _float_tensors(model: Any) -> set[str]:
    from onnx import TensorProto

    typed = list(model.graph.value_info) + list(model.graph.output)
    return {v.name for v in typed if v.type.tensor_type.elem_type == TensorProto.FLOAT}
