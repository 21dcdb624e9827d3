"""The NPU operator report: every node of the static fp32 model predicted on the NPU or the CPU.

Three outcomes, as AMD's flows partition a model (a prediction: the Vitis AI EP's own report,
``vitisai_ep_report.json`` or the VAIML pass summary, has the final word):

- **NPU**: the operator is in the flow's support table for the configuration (and, for VAIML, within
  the per-operator shape limits); connected NPU nodes form one NPU subgraph.
- **CPU fallback (graph split)**: a node the table does not list runs on the CPU; the NPU subgraphs
  around it are split there. VAIML also sends to the CPU a subgraph below ``threshold_gops_percent``
  of the model's GOPs, and the subgraphs beyond ``max_npu_subgraphs``.
- **CPU only (whole model)**: a dynamic shape other than the batch, or a control-flow operator: the
  flow does not partition such a model, so every node runs on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnx_pipeline.files import to_jsonable
from onnx_pipeline.targets import NpuSpec
from onnx_pipeline.vitis.dpu_report import NodePlacement
from onnx_pipeline.vitis.graph import shapes
from onnx_pipeline.vitis.npu_support import SupportTable, support_table
from onnx_pipeline.vitis.plan import attrs

NPU, CPU = "NPU", "CPU"
CPU_ONLY_OPS = ("If", "Loop", "Scan", "SequenceConstruct", "SequenceAt", "SplitToSequence", "ConcatFromSequence")
_FUSABLE = ("Relu", "LeakyRelu")
_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class NpuReport:
    """The per-node placement for one NPU flow and configuration, with its subgraphs."""

    flow: str
    board: str
    config: str
    table: str
    nodes: tuple[NodePlacement, ...]
    #: why the whole model runs on the CPU (empty when it is partitioned)
    cpu_only: tuple[str, ...] = ()
    #: NPU subgraphs: node names and share of the model's GOPs
    subgraphs: tuple[dict[str, Any], ...] = ()

    @property
    def on_cpu(self) -> tuple[NodePlacement, ...]:
        return tuple(n for n in self.nodes if n.device == CPU)

    def summary(self) -> dict[str, Any]:
        """Counts per device, the CPU nodes with their rules, the subgraphs."""
        return {
            "flow": self.flow,
            "board": self.board,
            "config": self.config,
            "support_table": self.table,
            "nodes": len(self.nodes),
            "on_npu": sum(n.device == NPU for n in self.nodes),
            "on_cpu": len(self.on_cpu),
            "whole_model_on_cpu": bool(self.cpu_only),
            "cpu_only_reasons": list(self.cpu_only),
            "npu_subgraphs": len(self.subgraphs),
            "cpu_nodes": [{"name": n.name, "op_type": n.op_type, "rule": n.rule} for n in self.on_cpu],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "onnx-pipeline/npu-report/1",
            **self.summary(),
            "subgraphs": list(self.subgraphs),
            "placements": [to_jsonable(n) for n in self.nodes],
        }

    def to_markdown(self, source: str = "") -> str:
        """A human-readable table of the same report."""
        s = self.summary()
        head = f"{s['on_npu']} of {s['nodes']} nodes predicted on the NPU, {s['on_cpu']} on the CPU"
        if self.cpu_only:
            head = f"**The whole model runs on the CPU**: {'; '.join(self.cpu_only)}"
        lines = [f"# NPU operator report: {self.flow} ({self.config}) on {self.board}", "", head + ".", ""]
        for i, g in enumerate(self.subgraphs):
            lines.append(f"- NPU subgraph {i}: {len(g['nodes'])} nodes, {g['gops_percent']:.1f}% of the GOPs")
        lines += ["", f"Rules: {source or self.table}; the compiler decides.", ""]
        lines += ["| # | node | op | device | rule | detail |", "|---|------|----|--------|------|--------|"]
        for i, n in enumerate(self.nodes):
            lines.append(f"| {i} | `{n.name}` | {n.op_type} | **{n.device}** | `{n.rule}` | {n.detail} |")
        return "\n".join(lines) + "\n"


def _dynamic_dims(model: Any) -> list[str]:
    """Tensors (interface and inferred values) with a dynamic dimension other than the batch (dimension 0).

    A dynamic batch is fine: the bundle fixes it to 1, and VAIML compiles dynamic batches itself.
    """
    found = []
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in list(dims)[1:]):
            found.append(value.name)
    return found


def cpu_only_reasons(model: Any) -> list[str]:
    """Why the flow would run the whole model on the CPU (empty: it partitions the model)."""
    reasons = []
    dynamic = _dynamic_dims(model)
    if dynamic:
        reasons.append(f"shape.dynamic: {', '.join(dynamic[:3])} has a dynamic non-batch dimension (export it static)")
    flow_ops = sorted({n.op_type for n in model.graph.node if n.op_type in CPU_ONLY_OPS})
    if flow_ops:
        reasons.append(f"model.control_flow: {', '.join(flow_ops)} (control flow and sequences are not partitioned)")
    return reasons


def _conv_rule(node: Any, shape: dict[str, tuple[int, ...]], config: str) -> tuple[str, str, str] | None:
    """VAIML's Conv2D shape limits (Operator Shape Support Matrix); None when they hold."""
    w = shape.get(node.input[1], ())
    if len(w) != 4:
        return CPU, "conv2d.rank", "only 2-D convolutions (the flow supports 2D CNNs)"
    a = attrs(node)
    kh, kw = int(w[2]), int(w[3])
    sh, sw = ([*list(a.get("strides", [1, 1])), 1, 1])[:2]
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return CPU, "conv2d.dilation", f"dilation {list(a['dilations'])}: only 1 is supported"
    if config == "BF16":
        widths, heights = (1, 3, 4, 5, 7, 15, 16, 128), (1, 3, 4, 5, 7, 9, 15)
        if kw not in widths or kh not in heights:
            return CPU, "conv2d.bf16.kernel", f"kernel {kh}x{kw}: BF16 widths {widths}, heights {heights}"
        if sh not in (1, 2, 4, 8) or sw not in (1, 2, 4):
            return CPU, "conv2d.bf16.stride", f"stride {sh}x{sw}: height 1/2/4/8, width 1/2/4"
        return None
    if not (1 <= kh <= 16 and 1 <= kw <= 16):
        return CPU, "conv2d.int8.kernel", f"kernel {kh}x{kw} outside 1..16"
    if not (1 <= sh <= 16 and sw in (1, 2)):
        return CPU, "conv2d.int8.stride", f"stride {sh}x{sw}: height 1..16, width 1 or 2"
    return None


def _pool_rule(node: Any, shape: dict[str, tuple[int, ...]]) -> tuple[str, str, str] | None:
    """VAIML's pooling limits: kernel and stride 1..20."""
    a = attrs(node)
    if node.op_type.startswith("Global"):
        x = shape.get(node.input[0], ())
        kernel, strides = (list(x[2:]) if len(x) == 4 else [0]), [1, 1]
    else:
        kernel, strides = list(a.get("kernel_shape", [1, 1])), list(a.get("strides", [1, 1]))
    if not all(1 <= k <= 20 for k in kernel) or not all(1 <= s <= 20 for s in strides):
        return CPU, "pool.window", f"kernel {kernel}, stride {strides}: 1..20 each"
    return None


def place_node(
    node: Any, table: SupportTable, config: str, shape: dict[str, tuple[int, ...]], producer: dict[str, Any]
) -> NodePlacement:
    """Predict one node's device for ``config`` from ``table``, naming the deciding rule."""
    op = node.op_type
    name = node.name or f"{op}_{node.output[0]}"
    src = producer.get(node.input[0]) if node.input else None
    if op in _FUSABLE and src is not None and src.op_type in _COMPUTE:
        return NodePlacement(name, op, NPU, "activation.fused", f"{op} fused into {src.op_type} (natively fused)")
    if op not in table.supported(config):
        return NodePlacement(name, op, CPU, "unsupported_op", f"{op} is not in the {config} column of {table.name}")
    limit = None
    if table.shape_rules and op == "Conv":
        limit = _conv_rule(node, shape, config)
    elif table.shape_rules and op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
        limit = _pool_rule(node, shape)
    if limit is not None:
        return NodePlacement(name, op, *limit)
    return NodePlacement(name, op, NPU, "supported", f"{op} in the {config} column of {table.name}")


def build_npu_report(model: Any, spec: NpuSpec, config: str | None = None) -> NpuReport:
    """Place every node of ``model`` (shapes inferred) for the flow of ``spec`` in ``config``."""
    config = config or spec.quant_config
    table = support_table(spec.support_table)
    reasons = cpu_only_reasons(model)
    if reasons:
        nodes = tuple(
            NodePlacement(n.name or f"{n.op_type}_{n.output[0]}", n.op_type, CPU, "whole_model", reasons[0])
            for n in model.graph.node
        )
        return NpuReport(spec.flow, spec.board, config, table.name, nodes, tuple(reasons))
    shape = shapes(model)
    producer = {t: n for n in model.graph.node for t in n.output}
    placed = [place_node(n, table, config, shape, producer) for n in model.graph.node]
    placed, subgraphs = _partition(model, placed, spec, shape)
    return NpuReport(spec.flow, spec.board, config, table.name, tuple(placed), (), tuple(subgraphs))


def _gops(node: Any, shape: dict[str, tuple[int, ...]]) -> float:
    """Multiply-accumulates x 2 of a Conv/Gemm/MatMul (0 for other nodes), in GOPs."""
    if node.op_type not in _COMPUTE or len(node.input) < 2:
        return 0.0
    w, y = shape.get(node.input[1], ()), shape.get(node.output[0], ())
    if not w or not y:
        return 0.0
    # Conv: C_in x kh x kw per output; Gemm/MatMul: the K dimension of B (transB: B is N x K)
    transposed = attrs(node).get("transB", 0)
    reduced = w[1:] if node.op_type.startswith("Conv") else (w[1:2] if transposed else w[:1])
    per_output = 1
    for d in reduced:
        per_output *= int(d)
    count = 1
    for d in y:
        count *= max(int(d), 1)
    return 2.0 * per_output * count / 1e9


def _partition(
    model: Any, placed: list[NodePlacement], spec: NpuSpec, shape: dict[str, tuple[int, ...]]
) -> tuple[list[NodePlacement], list[dict[str, Any]]]:
    """Group connected NPU nodes into subgraphs; apply VAIML's GOPs threshold and subgraph count."""
    nodes = list(model.graph.node)
    on_npu = {i for i, p in enumerate(placed) if p.device == NPU}
    parent = {i: i for i in on_npu}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    made_by = {t: i for i, n in enumerate(nodes) for t in n.output}
    for i in on_npu:
        for t in nodes[i].input:
            j = made_by.get(t)
            if j is not None and j in on_npu:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in sorted(on_npu):
        groups.setdefault(find(i), []).append(i)
    total = sum(_gops(n, shape) for n in nodes) or 1.0
    ranked = sorted(groups.values(), key=lambda g: -sum(_gops(nodes[i], shape) for i in g))
    subgraphs: list[dict[str, Any]] = []
    for rank, members in enumerate(ranked):
        share = 100.0 * sum(_gops(nodes[i], shape) for i in members) / total
        rule = ""
        if spec.threshold_gops_percent is not None and share < spec.threshold_gops_percent:
            rule = f"subgraph.gops_threshold: {share:.1f}% of the GOPs < {spec.threshold_gops_percent}%"
        elif spec.max_npu_subgraphs is not None and len(subgraphs) >= spec.max_npu_subgraphs:
            rule = f"subgraph.max_count: beyond {spec.max_npu_subgraphs} NPU subgraphs (rank {rank})"
        if rule:
            for i in members:
                placed[i] = NodePlacement(placed[i].name, placed[i].op_type, CPU, rule.split(":")[0], rule)
            continue
        subgraphs.append({"nodes": [placed[i].name for i in members], "gops_percent": round(share, 3)})
    return placed, subgraphs
