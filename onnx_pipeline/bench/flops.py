"""FLOP counting: multiply-adds ×2 of a model's Conv/Gemm/MatMul nodes per image, and their weight bytes,
for the GEMM floor and the roofline. onnx is imported only inside ``count_flops``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.bench.floors import GemmRate, MemoryRate
from onnx_pipeline.errors import BundleError


@dataclass(frozen=True)
class FlopCount:
    """Multiply-adds ×2 of the Conv/Gemm/MatMul nodes of a model, per image, and their weight bytes.

    ``layers`` holds ``(flops per image, weight bytes)`` per counted node, for the roofline.
    """

    flops_per_image: int
    source: str
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()
    weight_bytes: int = 0
    #: bytes of every intermediate tensor of one image (an upper bound of what a run allocates per image)
    activation_bytes: int = 0
    #: per-node detail: long, and only an input of the roofline (not in the JSON form)
    layers: tuple[tuple[int, int], ...] = field(default=(), metadata={"json": False})

    def roofline_ms(self, batch: int, gemm: GemmRate, memory: MemoryRate | None) -> float:
        """Σ per layer of max(compute time, weight streaming time) for one batch, in ms."""
        compute = 1.0 / (gemm.gflops * 1e9)
        cached = memory is None or (memory.llc_bytes is not None and self.weight_bytes <= memory.llc_bytes)
        stream = 0.0 if cached or memory is None else 1.0 / (memory.gbytes_per_s * 1e9)
        return 1000.0 * sum(max(flops * batch * compute, nbytes * stream) for flops, nbytes in self.layers)


_CONTRIB_AS_STANDARD: dict[str, tuple[str, tuple[str, ...]]] = {
    "FusedConv": ("Conv", ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")),
    "FusedGemm": ("Gemm", ("alpha", "beta", "transA", "transB")),
    "FusedMatMul": ("MatMul", ()),
}


def count_flops(model_path: Path) -> FlopCount:
    """Count 2·MACs per image of Conv (incl. ConvInteger, QLinearConv, FusedConv), Gemm and MatMul nodes.

    Conv: 2·Cout·Cin/groups·kh·kw·Hout·Wout; Gemm/MatMul: 2·M·N·K; shapes from onnx shape
    inference with the batch fixed to 1. Weights are not loaded. onnxruntime's fused contrib
    ops are renamed to their standard form first so that shape inference sees through them.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path), load_external_data=False)
    _prepare_for_inference(model.graph)
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several untyped errors
        raise BundleError(f"onnx shape inference failed on {model_path.name}: {exc}") from exc
    shapes, weight_sizes = _shapes_and_weights(inferred.graph)
    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    layers: list[tuple[int, int]] = []
    for node in inferred.graph.node:
        flops = _node_flops(node, shapes)
        if flops is None:
            if node.op_type in _COUNTED_OPS:
                uncounted.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
        weight = node.input[3] if node.op_type in ("QLinearConv", "QLinearMatMul") else node.input[1]
        layers.append((flops, weight_sizes.get(weight, 0)))
    return FlopCount(
        flops_per_image=sum(by_op.values()),
        source=model_path.name,
        by_op=by_op,
        uncounted=tuple(uncounted),
        weight_bytes=sum(nbytes for _, nbytes in layers),
        activation_bytes=_activation_bytes(inferred.graph, shapes),
        layers=tuple(layers),
    )


def _activation_bytes(graph: Any, shapes: dict[str, list[int | None]]) -> int:
    """Sum of the float32 sizes of the graph's intermediate and output tensors at batch 1 (unknown dims as 1)."""
    names = {v.name for v in (*graph.value_info, *graph.output)}
    total = 0
    for name in names:
        dims = shapes.get(name) or []
        total += 4 * int(np.prod([d or 1 for d in dims], dtype=np.int64))
    return total


def _prepare_for_inference(graph: Any) -> None:
    """Batch 1, nodes in order, stale shapes dropped, fused contrib ops renamed to their standard form."""
    initializer_names = {init.name for init in graph.initializer}
    for graph_input in graph.input:
        if graph_input.name in initializer_names:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    # onnxruntime's quantizer appends Q/DQ nodes out of order; shape inference needs topological order.
    ordered = _ordered(list(graph.node))
    del graph.node[:]
    graph.node.extend(ordered)
    # Shapes recorded with a symbolic batch (e.g. by quant_pre_process) would win over inferred ones: drop them.
    del graph.value_info[:]
    for graph_output in graph.output:
        for dim in graph_output.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
    for node in graph.node:
        if node.domain == "com.microsoft" and node.op_type in _CONTRIB_AS_STANDARD:
            standard, allowed = _CONTRIB_AS_STANDARD[node.op_type]
            node.op_type, node.domain = standard, ""
            kept = [a for a in node.attribute if a.name in allowed]
            del node.attribute[:]
            node.attribute.extend(kept)
            del node.input[3 if standard != "MatMul" else 2 :]  # FusedConv's optional Z (sum) input


def _shapes_and_weights(graph: Any) -> tuple[dict[str, list[int | None]], dict[str, int]]:
    """Every tensor's shape (None where unknown) and the bytes of each weight, followed through DQ/Cast."""
    import onnx

    shapes: dict[str, list[int | None]] = {}
    for value in (*graph.value_info, *graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weight_sizes: dict[str, int] = {}
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        weight_sizes[init.name] = int(np.prod(init.dims, dtype=np.int64)) * itemsize
    # a QDQ model's weights reach Conv/MatMul through DequantizeLinear (or a Cast/Transpose): follow it
    for node in graph.node:
        if node.op_type in ("DequantizeLinear", "Cast", "Transpose", "Identity") and node.input[0] in weight_sizes:
            weight_sizes.setdefault(node.output[0], weight_sizes[node.input[0]])
    for node in graph.node:  # Constant weights (some exporters emit them)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    return shapes, weight_sizes


def _ordered(nodes: list[Any]) -> list[Any]:
    """Nodes with producers first (the stored order where the graph has a cycle)."""
    from onnx_pipeline.onnxfile import topological_order

    try:
        return topological_order(nodes, set())
    except ValueError:
        return nodes


_COUNTED_OPS = ("Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")


def _known(shape: list[int | None] | None) -> list[int] | None:
    if not shape:
        return None
    known = [d for d in shape if d is not None and d > 0]
    return known if len(known) == len(shape) else None


def _node_flops(node: Any, shapes: dict[str, list[int | None]]) -> int | None:
    op = node.op_type
    if op not in _COUNTED_OPS:
        return None
    if op in ("Conv", "ConvInteger"):
        w_name, a_name = node.input[1], node.input[0]
    elif op == "QLinearConv":
        w_name, a_name = node.input[3], node.input[0]
    elif op == "QLinearMatMul":
        a_name, w_name = node.input[0], node.input[3]
    else:
        a_name, w_name = node.input[0], node.input[1]
    out = _known(shapes.get(node.output[0]))
    weight = _known(shapes.get(w_name))
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        if out is None or weight is None or len(weight) < 3:
            return None
        cout, cin_per_group = weight[0], weight[1]  # the weight is (Cout, Cin/groups, kh, kw)
        return 2 * cout * cin_per_group * int(np.prod(weight[2:])) * int(np.prod(out[2:])) * out[0]
    a = _known(shapes.get(a_name))
    if op == "Gemm":
        if weight is None or a is None:
            return None
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
        trans_b = next((x.i for x in node.attribute if x.name == "transB"), 0)
        n = weight[0] if trans_b else weight[1]
        return 2 * m * n * k
    # MatMul family: out (..., M, N), K from A's last dim
    if out is None or a is None:
        return None
    return 2 * int(np.prod(out)) * a[-1]
