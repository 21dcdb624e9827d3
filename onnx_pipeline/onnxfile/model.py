"""Reading ONNX files: loading with one-line errors, describing a model, ordering its nodes."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_pipeline.errors import BundleError, InputError


def _external_info(tensor: Any) -> tuple[str, int, int | None]:
    entries = {e.key: e.value for e in tensor.external_data}
    length = entries.get("length")
    return entries["location"], int(entries.get("offset", 0)), int(length) if length is not None else None


def external_data_files(path: Path) -> set[str]:
    """The external data files (relative locations) that ``path``'s tensors refer to."""
    model = load_onnx(path, load_external_data=False)
    return {_external_info(t)[0] for t in model.graph.initializer if t.external_data}


def topological_order(nodes: list[Any], available: set[str]) -> list[Any]:
    """``nodes`` ordered so every input is produced before use (Kahn's algorithm, stable).

    ``available``: tensors present before any node runs (graph inputs, initializers). Raises
    ``ValueError`` on a cycle or an input nothing produces.
    """
    available = set(available) | {""}
    producers: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for out in node.output:
            producers[out] = index
    waiting = {i: {t for t in n.input if t not in available and t in producers} for i, n in enumerate(nodes)}
    consumers: dict[int, list[int]] = {}
    for i, deps in waiting.items():
        for t in deps:
            consumers.setdefault(producers[t], []).append(i)
    ready = [i for i, deps in waiting.items() if not deps]
    order: list[int] = []
    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers.get(i, []):
            deps = waiting[j]
            for t in nodes[i].output:
                deps.discard(t)
            if not deps and j not in order and j not in ready:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle or a node whose input is never produced")
    return [nodes[i] for i in order]


def topological_sort(graph: Any) -> None:
    """Order ``graph.node`` in place so every input is produced before use; ``BundleError`` on a cycle."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    try:
        ordered = topological_order(list(graph.node), available)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    del graph.node[:]
    graph.node.extend(ordered)


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, shape (a dynamic dim is its name) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class ModelInfo:
    """Counts and sizes of an ONNX model, for before/after comparisons."""

    nodes: int
    initializers: int
    size_bytes: int
    opset: int
    ir_version: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    op_types: dict[str, int]


def _tensor_infos(values: Any) -> tuple[TensorInfo, ...]:
    import onnx

    infos = []
    for value in values:
        tensor_type = value.type.tensor_type
        dims: list[int | str] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or "?")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "?"
        infos.append(TensorInfo(value.name, tuple(dims), dtype))
    return tuple(infos)


def load_onnx(path: Path, *, load_external_data: bool = True) -> Any:
    """Load an ONNX file, turning a missing, corrupt or non-ONNX file into a one-line ``InputError``."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist: give the path of an .onnx file or a run folder")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty: re-export the model")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise InputError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {detail}): "
            "is it truncated or another kind of file? Re-export it"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path} parsed as an empty ONNX graph: it is not an ONNX model (a text file?)")
    return model


def describe_model(path: Path, model: Any | None = None) -> ModelInfo:
    """Counts, opset, inputs and outputs of an ONNX file (without loading external weights)."""
    path = Path(path)
    model = model if model is not None else load_onnx(path, load_external_data=False)
    initializer_names = {init.name for init in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializer_names]
    op_types: dict[str, int] = {}
    for node in model.graph.node:
        op_types[node.op_type] = op_types.get(node.op_type, 0) + 1
    size = path.stat().st_size
    data = {init.external_data[0].value for init in model.graph.initializer if init.external_data}
    for location in data:
        extra = path.parent / location
        if extra.is_file():
            size += extra.stat().st_size
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelInfo(
        nodes=len(model.graph.node),
        initializers=len(model.graph.initializer),
        size_bytes=size,
        opset=int(opset),
        ir_version=int(model.ir_version),
        inputs=_tensor_infos(graph_inputs),
        outputs=_tensor_infos(model.graph.output),
        op_types=dict(sorted(op_types.items())),
    )
