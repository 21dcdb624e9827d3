"""ONNX file plumbing shared by the steps: loading with one-line errors, describing, and writing a
model with its weights inline faster than onnx itself does.

``onnx.save_model`` on a model loaded with its external data holds the weights twice (the
tensors and the serialised bytes) and took 8 s for VGG16 here. ``inline_external_data``
writes the same protobuf by streaming: the small part of the model is serialised, each
external tensor's bytes are copied from the data file straight into its ``raw_data`` field.
Memory stays flat; the file's sha256 is computed while writing.
"""

from __future__ import annotations

import hashlib
import heapq
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.errors import BundleError, InputError

_MODEL_GRAPH_TAG = b"\x3a"  # ModelProto.graph: field 7, length-delimited
_GRAPH_INITIALIZER_TAG = b"\x2a"  # GraphProto.initializer: field 5, length-delimited
_TENSOR_RAW_DATA_TAG = b"\x4a"  # TensorProto.raw_data: field 9, length-delimited
_CHUNK = 8 << 20
#: protobuf cannot serialise a single message over 2 GiB: bigger models must use external data
PROTOBUF_LIMIT = 2**31 - 1


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _external_info(tensor: Any) -> tuple[str, int, int | None]:
    entries = {e.key: e.value for e in tensor.external_data}
    length = entries.get("length")
    return entries["location"], int(entries.get("offset", 0)), int(length) if length is not None else None


def external_data_files(path: Path) -> set[str]:
    """The external data files (relative locations) that ``path``'s tensors refer to."""
    model = load_onnx(path, load_external_data=False)
    return {_external_info(t)[0] for t in model.graph.initializer if t.external_data}


def inline_external_data(path: Path, out: Path) -> str:
    """Write ``path`` (a model whose weights are external) to ``out`` with every weight inline.

    Returns the sha256 of ``out``. ``out`` must differ from ``path``; the data files are left.
    """
    import onnx

    path, out = Path(path), Path(out)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    pieces: list[tuple[bytes, tuple[Path, int, int] | None]] = []
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location, offset, length = _external_info(tensor)
            data_file = path.parent / location
            if length is None:
                length = data_file.stat().st_size - offset
            meta = onnx.TensorProto()
            meta.CopyFrom(tensor)
            del meta.external_data[:]
            meta.ClearField("data_location")
            meta.ClearField("raw_data")
            pieces.append((meta.SerializeToString(), (data_file, offset, length)))
        else:
            pieces.append((tensor.SerializeToString(), None))
    del graph.initializer[:]
    graph_rest = graph.SerializeToString()
    model.ClearField("graph")
    model_rest = model.SerializeToString()

    def tensor_size(meta: bytes, data: tuple[Path, int, int] | None) -> int:
        if data is None:
            return len(meta)
        return len(meta) + 1 + len(varint(data[2])) + data[2]

    graph_len = len(graph_rest)
    for blob, data in pieces:
        size = tensor_size(blob, data)
        graph_len += 1 + len(varint(size)) + size
    digest = hashlib.sha256()
    # sha256 runs at ~600 MB/s on one core and releases the GIL: hash in a second thread while
    # this one copies, so a 500 MB model costs one pass, not two.
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def hash_chunks() -> None:
        while (chunk := chunks.get()) is not None:
            digest.update(chunk)

    hasher = threading.Thread(target=hash_chunks, daemon=True)
    hasher.start()
    try:
        with open(out, "wb") as handle:

            def write(blob: bytes) -> None:
                handle.write(blob)
                chunks.put(blob)

            write(model_rest + _MODEL_GRAPH_TAG + varint(graph_len) + graph_rest)
            for blob, data in pieces:
                write(_GRAPH_INITIALIZER_TAG + varint(tensor_size(blob, data)) + blob)
                if data is not None:
                    data_file, offset, length = data
                    write(_TENSOR_RAW_DATA_TAG + varint(length))
                    _copy_range(data_file, offset, length, write)
    finally:
        chunks.put(None)
        hasher.join()
    return digest.hexdigest()


def _copy_range(source: Path, offset: int, length: int, write: Any) -> None:
    with open(source, "rb") as handle:
        handle.seek(offset)
        remaining = length
        while remaining:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                raise OSError(f"{source} ends before offset {offset + length}: the external data is truncated")
            write(chunk)
            remaining -= len(chunk)


def model_skeleton(model: Any) -> Any:
    """A copy of ``model`` without its initializers (the caller adds what it wants, without copying the rest)."""
    import onnx

    out = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, name, getattr(model, name))
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    graph, source = out.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    graph.sparse_initializer.extend(source.sparse_initializer)
    return out


#: initializers at least this large are handed to onnxruntime as OrtValues instead of being serialized
_EXTERNAL_MIN_ELEMENTS = 1024


def weightless_copy(model: Any) -> tuple[Any, list[str], list[np.ndarray]]:
    """A copy of ``model`` whose large initializers are external-data placeholders, and those initializers.

    The weights are not copied: the returned arrays view the model's buffers. Pass them to
    ``SessionOptions.add_external_initializers`` to run the copy, or use the copy where only the
    graph matters (shape inference). This avoids serializing and re-parsing the weights (several
    seconds for VGG16's 528 MB).
    """
    import onnx
    from onnx import numpy_helper

    copy = model_skeleton(model)
    graph, source = copy.graph, model.graph
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for init in source.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or int(np.prod(init.dims)) < _EXTERNAL_MIN_ELEMENTS:
            graph.initializer.append(init)
            continue
        placeholder = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
        placeholder.data_location = onnx.TensorProto.EXTERNAL
        placeholder.external_data.add(key="location", value="__onnx_pipeline_in_memory__")
        graph.initializer.append(placeholder)
        names.append(init.name)
        arrays.append(np.ascontiguousarray(numpy_helper.to_array(init)))
    return copy, names, arrays


def infer_shapes(model: Any) -> None:
    """Run ONNX shape inference on ``model`` in place, on a weightless copy (the weights are not serialized)."""
    import onnx

    skeleton, _, _ = weightless_copy(model)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)


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
