"""Which PyTorch module each ONNX node came from, and the one tensor each module hands on.

The dynamo exporter records the module path of every node in its metadata
(``pkg.torch.onnx.name_scopes``: ``['', 'layer1', 'layer1.0', 'layer1.0.bn1', '<fx node>']``); the
TorchScript exporter names nodes by scope (``/features/features.19/Conv``). Simplifiers keep both.
A fused node keeps the metadata of the op it ends with (a BatchNorm folded into its Conv is named
after the BatchNorm), so a module with no node left simply has no tensor to compare.

A module's *output tensor* is the one tensor its nodes produce that is used outside it (or is a graph
output); a module with several such tensors (or none) is not compared.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

NAME_SCOPES = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class ModuleTensor:
    """The ONNX tensor that carries one PyTorch module's output, and the node that produces it."""

    module: str
    tensor: str
    node: str
    op_type: str
    #: position of ``node`` in the graph (graph order is topological)
    order: int


def node_module(node: Any) -> str | None:
    """The path of the innermost PyTorch module ``node`` belongs to (``features.19``), or None."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            modules = [str(s) for s in scopes[1:-1]] if isinstance(scopes, list) else []
            return modules[-1] if modules else None
    if node.name.startswith("/"):
        return _scope_path(node.name.split("/")[1:-1])
    return None


def _scope_path(segments: list[str]) -> str | None:
    """TorchScript scope segments (``['layer1', 'layer1.0', 'conv1']``) as a module path (``layer1.0.conv1``)."""
    path = ""
    for segment in segments:
        if not segment:
            continue
        path = segment if not path or segment.startswith(path + ".") else f"{path}.{segment}"
    return path or None


def _ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def module_tensors(graph: Any) -> list[ModuleTensor]:
    """Every module with exactly one output tensor, in graph order (the innermost module when two share it)."""
    nodes = list(graph.node)
    paths = [node_module(n) for n in nodes]
    members: dict[str, set[int]] = {}
    for index, path in enumerate(paths):
        for ancestor in _ancestors(path) if path else []:
            members.setdefault(ancestor, set()).add(index)
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    graph_outputs = {o.name for o in graph.output}
    by_tensor: dict[str, ModuleTensor] = {}
    for module, inside in members.items():
        exits = [
            (index, name)
            for index in sorted(inside)
            for name in nodes[index].output
            if name and (name in graph_outputs or any(c not in inside for c in consumers.get(name, [])))
        ]
        if len(exits) != 1:
            continue
        index, name = exits[0]
        known = by_tensor.get(name)
        if known is None or module.count(".") > known.module.count("."):
            by_tensor[name] = ModuleTensor(module, name, nodes[index].name, nodes[index].op_type, index)
    return sorted(by_tensor.values(), key=lambda m: m.order)
