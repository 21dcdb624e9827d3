"""The DPU operator report: every node of the static fp32 model predicted on the DPU or the CPU.

A prediction, not the compiler's verdict: the rules are UG1414's "Currently Supported Operators"
limits for the profile's DPU (kernel, stride, padding, bank-depth and kernel-area rules), and each
node names the rule that decided it. ``vai_c_xir`` / the Vitis AI EP have the final word.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from onnx_pipeline.files import to_jsonable
from onnx_pipeline.targets import DpuSpec
from onnx_pipeline.vitis.graph import shapes

DPU, CPU = "DPU", "CPU"
LAYOUT_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
ELEMENTWISE_OPS = ("Add", "Sum", "Mul", "Sub")
ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "HardSigmoid", "HardSwish")


@dataclass(frozen=True)
class NodePlacement:
    """Where one node is predicted to run, and the rule that decided it."""

    name: str
    op_type: str
    device: str
    rule: str
    detail: str


@dataclass(frozen=True)
class DpuReport:
    """The per-node placement for one DPU, with a summary."""

    dpu: str
    board: str
    nodes: tuple[NodePlacement, ...]

    @property
    def on_cpu(self) -> tuple[NodePlacement, ...]:
        return tuple(n for n in self.nodes if n.device == CPU)

    @property
    def dpu_subgraphs(self) -> int:
        """Runs of consecutive DPU nodes in graph order (each a DPU subgraph, with a CPU hand-over between)."""
        devices = [n.device for n in self.nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
        return sum(1 for i, d in enumerate(devices) if d == DPU and (i == 0 or devices[i - 1] != DPU))

    def summary(self) -> dict[str, Any]:
        """Counts per device, the DPU subgraphs, and the CPU nodes with their rules."""
        return {
            "dpu": self.dpu,
            "board": self.board,
            "nodes": len(self.nodes),
            "on_dpu": sum(n.device == DPU for n in self.nodes),
            "on_cpu": len(self.on_cpu),
            "dpu_subgraphs": self.dpu_subgraphs,
            "cpu_nodes": [{"name": n.name, "op_type": n.op_type, "rule": n.rule} for n in self.on_cpu],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "onnx-pipeline/vitis-dpu-report/1",
            **self.summary(),
            "placements": [to_jsonable(n) for n in self.nodes],
        }

    def to_markdown(self) -> str:
        """A human-readable table of the same report."""
        s = self.summary()
        lines = [
            f"# DPU operator report: {self.dpu} on {self.board}",
            "",
            f"{s['on_dpu']} of {s['nodes']} nodes predicted on the DPU, {s['on_cpu']} on the CPU, "
            f"in {s['dpu_subgraphs']} DPU subgraph(s).",
            'Rules: UG1414 (Vitis AI 3.5) "Currently Supported Operators" for this DPU; the compiler decides.',
            "",
            "| # | node | op | device | rule | detail |",
            "|---|------|----|--------|------|--------|",
        ]
        for i, n in enumerate(self.nodes):
            lines.append(f"| {i} | `{n.name}` | {n.op_type} | **{n.device}** | `{n.rule}` | {n.detail} |")
        return "\n".join(lines) + "\n"


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _in_range(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _conv(node: Any, spec: DpuSpec, shape: dict[str, tuple[int, ...]], consts: set[str]) -> tuple[str, str, str]:
    a = _attrs(node)
    w = shape.get(node.input[1], ())
    if node.input[1] not in consts or len(w) != 4:
        return CPU, "conv2d.weights", "only 2-D convolutions with constant weights run on the DPU"
    kh, kw = int(w[2]), int(w[3])
    sh, sw = ([*list(a.get("strides", [1, 1])), 1, 1])[:2]
    dh, dw = ([*list(a.get("dilations", [1, 1])), 1, 1])[:2]
    pads = list(a.get("pads", [0, 0, 0, 0]))
    group = int(a.get("group", 1))
    x = shape.get(node.input[0], ())
    in_ch = int(x[1]) if len(x) == 4 else int(w[1]) * group
    out_ch = int(w[0])
    kind = "conv2d"
    k_range, s_range = spec.conv_kernel, spec.conv_stride
    if group > 1:
        if group == in_ch and out_ch == in_ch:
            kind, k_range, s_range = "depthwise-conv2d", spec.depthwise_kernel, spec.depthwise_stride
        else:
            return CPU, "conv2d.group", f"grouped convolution (group={group}) that is not depthwise"
    if node.op_type == "ConvTranspose":
        kind = "transposed-conv2d"
    if not (_in_range(kh, k_range) and _in_range(kw, k_range)):
        return CPU, f"{kind}.kernel_size", f"kernel {kh}x{kw} outside [{k_range[0]}, {k_range[1]}]"
    if not (_in_range(sh, s_range) and _in_range(sw, s_range)):
        return CPU, f"{kind}.stride", f"stride {sh}x{sw} outside [{s_range[0]}, {s_range[1]}] on {spec.family}"
    if spec.conv_kernel_area_limit is not None and 256 * kh * kw > spec.conv_kernel_area_limit:
        return CPU, f"{kind}.kernel_area", f"256*{kh}*{kw} = {256 * kh * kw} > {spec.conv_kernel_area_limit}"
    if len(pads) == 4:
        top, left, bottom, right = pads
        if max(top, bottom) > (kh - 1) * dh or max(left, right) > (kw - 1) * dw:
            return CPU, f"{kind}.padding", f"pads {pads} exceed (kernel-1)*dilation"
    if dh * in_ch > 256 * spec.channel_parallel or dw * in_ch > 256 * spec.channel_parallel:
        return CPU, f"{kind}.dilation", f"dilation*input_channel > 256*channel_parallel ({256 * spec.channel_parallel})"
    in_size = kh * kw * math.ceil((1 if kind == "depthwise-conv2d" else in_ch) / spec.channel_parallel)
    if in_size > spec.bank_depth:
        return (
            CPU,
            f"{kind}.in_size",
            (f"kernel_w*kernel_h*ceil(input_channel/channel_parallel) = {in_size} > bank_depth {spec.bank_depth}"),
        )
    if out_ch > 256 * spec.channel_parallel:
        return CPU, f"{kind}.out_size", f"output_channel {out_ch} > 256*channel_parallel"
    return DPU, f"{kind}.supported", f"kernel {kh}x{kw}, stride {sh}x{sw}, {in_ch}→{out_ch} channels"


def _pool(node: Any, spec: DpuSpec, shape: dict[str, tuple[int, ...]]) -> tuple[str, str, str]:
    a = _attrs(node)
    kind = "max-pooling" if "Max" in node.op_type else "average-pooling"
    k_range = spec.pool_kernel if kind == "max-pooling" else spec.avgpool_kernel
    if node.op_type.startswith("Global"):
        x = shape.get(node.input[0], ())
        if len(x) != 4:
            return CPU, f"{kind}.global", "global pooling of a tensor that is not 4-D"
        kh, kw = int(x[2]), int(x[3])
        sh = sw = 1
        if kh == 1 and kw == 1:
            return DPU, f"{kind}.global", "1x1 global pooling is an identity"
    else:
        kernel = list(a.get("kernel_shape", [1, 1]))
        if len(kernel) != 2:
            return CPU, f"{kind}.rank", f"{len(kernel)}-D pooling"
        kh, kw = kernel
        sh, sw = ([*list(a.get("strides", [1, 1])), 1, 1])[:2]
    if not (_in_range(kh, k_range) and _in_range(kw, k_range)):
        return CPU, f"{kind}.kernel_size", f"kernel {kh}x{kw} outside [{k_range[0]}, {k_range[1]}]"
    if kind == "average-pooling" and kh != kw:
        return CPU, f"{kind}.square_kernel", f"average pooling kernel {kh}x{kw} is not square"
    if not (_in_range(sh, spec.pool_stride) and _in_range(sw, spec.pool_stride)):
        return CPU, f"{kind}.stride", f"stride {sh}x{sw} outside [{spec.pool_stride[0]}, {spec.pool_stride[1]}]"
    return DPU, f"{kind}.supported", f"kernel {kh}x{kw}, stride {sh}x{sw}"


def place_node(
    node: Any, spec: DpuSpec, shape: dict[str, tuple[int, ...]], consts: set[str], producer: dict[str, Any]
) -> NodePlacement:
    """Predict one node's device for ``spec``, naming the deciding rule."""
    op = node.op_type
    device, rule, detail = CPU, "unsupported_op", f"{op} is not in UG1414's DPU operator list for {spec.family}"
    if op in ("Conv", "ConvTranspose"):
        device, rule, detail = _conv(node, spec, shape, consts)
    elif op in ("Gemm", "MatMul"):
        if len(node.input) > 1 and node.input[1] in consts:
            device, rule, detail = DPU, "fully-connected", "inner product with constant weights (as a 1x1 conv)"
        else:
            device, rule, detail = CPU, "fully-connected.weights", "matrix product of two activations"
    elif op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
        device, rule, detail = _pool(node, spec, shape)
    elif op in ACTIVATIONS or op == "Clip":
        src = producer.get(node.input[0])
        fused = src is not None and src.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
        if op == "Clip" and not _clip_is_relu6(node, consts):
            device, rule, detail = CPU, "clip.range", "Clip other than ReLU6 (0..6)"
        else:
            device, rule = DPU, "activation.fused" if fused else "activation"
            detail = f"{op} fused into {src.op_type}" if fused and src is not None else f"{op} on the DPU"
    elif op in ELEMENTWISE_OPS:
        device, rule, detail = DPU, "elementwise", f"elementwise {op.lower()}"
    elif op == "Concat":
        device, rule, detail = DPU, "concat", "channel concat (positions aligned)"
    elif op in LAYOUT_OPS:
        device, rule, detail = DPU, "layout", f"{op} is a layout change the compiler folds"
    elif op == "Pad":
        device, rule, detail = DPU, "pad", "padding (merged into the next conv/pool by the compiler)"
    elif op == "BatchNormalization":
        src = producer.get(node.input[0])
        if src is not None and src.op_type == "Conv":
            device, rule, detail = DPU, "batchnorm.folded", "BatchNormalization folded into the Conv"
        else:
            device, rule, detail = CPU, "batchnorm.standalone", "BatchNormalization without a preceding Conv"
    elif op == "Softmax":
        device, rule, detail = (
            CPU,
            "softmax.cpu",
            ("Softmax runs on the CPU (UG1414: not a DPU operator; some boards add a separate Softmax IP)"),
        )
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        device, rule, detail = DPU, "qdq", "quantization boundary consumed by the compiler"
    return NodePlacement(
        name=node.name or f"{op}_{node.output[0]}", op_type=op, device=device, rule=rule, detail=detail
    )


def _clip_is_relu6(node: Any, consts: set[str]) -> bool:
    return len(node.input) >= 3 and node.input[1] in consts and node.input[2] in consts


def build_dpu_report(model: Any, spec: DpuSpec, *, kept_in_float: Collection[str] = ()) -> DpuReport:
    """Place every node of ``model`` (static shapes inferred) for ``spec``.

    ``kept_in_float``: nodes the automatic fallback keeps in float32: the DPU runs integers only, so they
    run on the CPU (rule ``kept-in-float``), splitting the DPU subgraph they were in.
    """
    shape = shapes(model)
    consts = {i.name for i in model.graph.initializer}
    producer = {t: n for n in model.graph.node for t in n.output}
    placements = tuple(place_node(n, spec, shape, consts, producer) for n in model.graph.node)
    kept = set(kept_in_float)
    placements = tuple(
        NodePlacement(p.name, p.op_type, CPU, "kept-in-float", "kept in float32 by the automatic fallback")
        if p.name in kept
        else p
        for p in placements
    )
    return DpuReport(dpu=spec.name, board=spec.board, nodes=placements)


def fallback_cost(model: Any, before: DpuReport, after: DpuReport) -> dict[str, Any]:
    """What keeping layers in float costs on the board: the work moved to the CPU and the extra DPU subgraphs."""
    shape = shapes(model)
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    moved = {p.name for p in after.nodes if p.rule == "kept-in-float"}
    total = moved_flops = 0
    for node in model.graph.node:
        flops = _macs(node, shape, dims) * 2
        total += flops
        if node.name in moved:
            moved_flops += flops
    return {
        "layers_on_cpu": len(moved),
        "flops_on_cpu": moved_flops,
        "flops_fraction_on_cpu": moved_flops / total if total else 0.0,
        "dpu_subgraphs_before": before.dpu_subgraphs,
        "dpu_subgraphs_after": after.dpu_subgraphs,
        "note": "each layer kept in float runs on the CPU in float32; every extra DPU subgraph adds a "
        "DPU-to-CPU hand-over (the tensors cross between the DPU's and the CPU's memory)",
    }


def _macs(node: Any, shape: dict[str, tuple[int, ...]], dims: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates per sample of a Conv/Gemm/MatMul with constant weights (0 for other nodes)."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
        return 0
    weight, out = dims.get(node.input[1]), shape.get(node.output[0], ())
    if not weight or len(out) < 2 or not out[1]:
        return 0
    per_output = math.prod(weight) // (weight[0] if node.op_type in ("Conv", "ConvTranspose") else out[-1])
    return int(math.prod(out[1:]) * max(per_output, 1))
