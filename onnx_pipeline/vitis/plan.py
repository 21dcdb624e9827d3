"""Which tensors of a static graph get a QDQ pair, and which must share a scale.

Shared by every scheme: ``QuantPlan`` walks the skeleton once; ``Groups`` ties tensors that must
carry one scale (Concat inputs and output; the output of a pooling, padding, slicing or layout op
and its input), as the compilers require (Quark's ``align_concat``/``align_pool``/...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from onnx_pipeline.errors import BundleError
from onnx_pipeline.vitis.graph import ModelParts

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FUSED_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip")
#: ops whose output keeps the input's scale (pooling, padding, slicing, layout)
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
#: ops whose output gets its own statistics
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


def attrs(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def is_relu6(node: Any, parts: ModelParts) -> bool:
    """A Clip with constant bounds 0 and 6."""
    if node.op_type != "Clip" or len(node.input) < 3:
        return False
    low, high = parts.array(node.input[1]), parts.array(node.input[2])
    return low is not None and high is not None and float(low) == 0.0 and float(high) == 6.0


class Groups:
    """Tensor values with tie groups (union-find): tied tensors share one value, combined by ``merge``.

    Positions merge with ``min`` (the coarser position holds every member); float ranges with ``max``.
    """

    def __init__(self, merge: Callable[[Any, Any], Any] = min) -> None:
        self.parent: dict[str, str] = {}
        self.value: dict[str, Any] = {}
        self.merge = merge
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
        va, vb = self.value.get(ra), self.value.pop(rb, None)
        if vb is not None:
            self.value[ra] = vb if va is None else self.merge(va, vb)

    def get(self, t: str) -> Any:
        return self.value[self.find(t)]

    def has(self, t: str) -> bool:
        return self.find(t) in self.value

    def set(self, t: str, value: Any, rule: str) -> None:
        root = self.find(t)
        old = self.value.get(root)
        if old != value:
            self.value[root] = value
            self.log.append(f"{rule}: {t} position {old} → {value}")
            self.moved.setdefault(t, []).append(rule)


class QuantPlan:
    """Which tensors are quantized, and how scales relate, for one skeleton graph."""

    def __init__(self, parts: ModelParts, *, fuse_activations: bool = True, tie_layout_ops: bool = True) -> None:
        graph = parts.skeleton.graph
        self.parts = parts
        self.fuse_activations = fuse_activations
        self.tie_layout_ops = tie_layout_ops
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
        self.own: set[str] = set()  # tensors whose scale comes from their own statistics
        self.weights: dict[str, str] = {}  # weight/bias initializer → "weight" | "bias"
        self.compute: list[Any] = []  # Conv/Gemm/MatMul nodes with quantized weights
        self._seen: set[str] = set()
        for node in graph.node:
            if self.is_quantized_op(node):
                self._plan_node(node)

    def is_quantized_op(self, node: Any) -> bool:
        if node.op_type == "Clip":
            return is_relu6(node, self.parts)
        if node.op_type == "MatMul":
            return node.input[1] in self.inits
        return node.op_type in QUANTIZED_OPS

    def _add(self, t: str, own: bool) -> None:
        if t and t not in self._seen and t not in self.inits:
            self._seen.add(t)
            self.quantized.append(t)
            if own:
                self.own.add(t)

    def _plan_node(self, node: Any) -> None:
        # inputs coming from the graph or from unquantized ops get their own QDQ
        for i, t in enumerate(node.input):
            if not t or t in self.inits or (node.op_type in WEIGHT_OPS and i > 0):
                continue
            src = self.producer.get(t)
            if src is None or not self.is_quantized_op(src):
                self._add(t, own=True)
        if node.op_type in WEIGHT_OPS and self._plan_weights(node):
            return
        if node.op_type in FUSED_ACTIVATIONS and node.input[0] in self.fused:
            self._add(node.output[0], own=True)
            return
        for t in node.output:
            self._add(t, own=node.op_type not in SAME_POSITION_OPS or not self.tie_layout_ops)

    def _plan_weights(self, node: Any) -> bool:
        """Record a compute node's weight and bias; True when its output is fused into an activation."""
        w = node.input[1] if len(node.input) > 1 else ""
        if w not in self.inits:
            raise BundleError(f"{node.op_type} '{node.name}' has a computed weight: not supported on the NPU")
        self.weights[w] = "weight"
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.inits:
                raise BundleError(f"{node.op_type} '{node.name}' has a computed bias")
            self.weights[node.input[2]] = "bias"
        self.compute.append(node)
        out = node.output[0]
        users = self.consumers.get(out, [])
        if (
            self.fuse_activations
            and node.op_type != "MatMul"
            and len(users) == 1
            and out not in self.graph_outputs
            and users[0].op_type in FUSED_ACTIVATIONS
            and self.is_quantized_op(users[0])
        ):
            self.fused[out] = users[0].output[0]
            return True
        return False

    def output_tensor(self, node: Any) -> str:
        """The quantized tensor that carries a compute node's output (its fused activation's, if fused)."""
        out = node.output[0]
        return self.fused.get(out, out)

    def tie_groups(self, groups: Groups) -> None:
        """Tie layout/pool outputs to their input and Concat inputs to its output."""
        for node in self.parts.skeleton.graph.node:
            if node.op_type in SAME_POSITION_OPS and node.input and node.input[0] in self.quantized:
                for out in node.output:
                    if out in self.quantized and out not in self.own:
                        groups.tie(node.input[0], out)
            if node.op_type == "Concat" and self.is_quantized_op(node):
                for t in node.input:
                    if t in self.quantized:
                        groups.tie(node.output[0], t)


def augment(parts: ModelParts, tensors: list[str]) -> Any:
    """A copy of the skeleton that also outputs ``tensors`` (for calibration statistics)."""
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
