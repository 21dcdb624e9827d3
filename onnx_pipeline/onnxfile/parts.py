"""A model as its graph and its weights apart, and the one weightless copy of a model.

A VGG16-size model is never held twice: ``ModelParts`` keeps the large initializers once, as numpy
arrays, beside a skeleton ``ModelProto`` whose tensors carry names, types and shapes but no data.
``load_parts`` maps a model's external data file instead of reading it (the arrays are read-only
views of the page cache: a model over 2 GB costs no private memory until a builder derives
something from it). The skeleton is what shape inference, rewriting and graph converters work on;
``write.write_model`` streams the arrays back into a file.

``weightless_copy`` is the one way a tool sees a model without its weights: the large initializers
become typed graph inputs (for onnx's shape inference and version converter, and simplifiers) or
external-data placeholders (for onnxruntime, which is handed the arrays in memory).
``ModelParts.session_source`` is how onnxruntime opens a ModelParts: weights still as stored in a
file are referred to there (onnxruntime maps the file itself), the others are handed over in memory
(which onnxruntime copies: for a 2.16 GB float model, 2.2 GB more per session).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: initializers with more elements than this live outside a ModelParts skeleton
LARGE_ELEMENTS = 1024
#: the location of an in-memory placeholder (never a file)
IN_MEMORY = "__onnx_pipeline_in_memory__"
_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data", "raw_data")


class FileMap(mmap.mmap):
    """A read-only mapping of a file that remembers which file, and which version of it, it maps."""

    path: Path
    identity: tuple[int, ...]


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_region(array: np.ndarray) -> tuple[Path, int] | None:
    """(file, byte offset) where ``array``'s bytes are stored as they are, if it views a mapped file that is
    still the one mapped (same inode, size and time): C order, little-endian, with its own shape."""
    mapped = mapping_of(array)
    if not isinstance(mapped, FileMap) or mapped.closed:
        return None
    if not array.flags.c_contiguous or array.dtype.byteorder == ">" or array.dtype.kind not in "biuf":
        return None
    try:
        if _identity(os.stat(mapped.path)) != mapped.identity:
            return None  # the file was replaced since it was mapped: its bytes are not these
    except OSError:
        return None
    start = np.frombuffer(mapped, dtype=np.uint8, count=1).ctypes.data
    return mapped.path, array.ctypes.data - start


@dataclass(frozen=True)
class SessionSource:
    """A ModelParts as onnxruntime opens it without a private copy of its weights (``ModelParts.session_source``)."""

    #: the graph: large initializers refer to their place in a file of ``folder``, or are in-memory placeholders
    skeleton: Any
    #: (names, arrays) of the placeholders, for ``create_session(external_initializers=...)``; keep them alive
    external: tuple[list[str], list[np.ndarray]]
    #: where the file references resolve (``create_session(external_data_folder=...)``); None: no references
    folder: Path | None


def _elements(tensor: Any) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1


def tensor_header(tensor: Any) -> Any:
    """A copy of ``tensor`` without its data and external-data entries (``raw_data`` is never read)."""
    import onnx

    meta = onnx.TensorProto()
    skip = {*_DATA_FIELDS, "external_data"}
    for descriptor in tensor.DESCRIPTOR.fields:
        name = descriptor.name
        if name in skip:
            continue
        if descriptor.is_repeated:
            getattr(meta, name).extend(getattr(tensor, name))
        elif not tensor.HasField(name):
            continue
        elif descriptor.message_type is not None:
            getattr(meta, name).CopyFrom(getattr(tensor, name))
        else:
            setattr(meta, name, getattr(tensor, name))
    if meta.data_location == onnx.TensorProto.EXTERNAL:
        meta.ClearField("data_location")
    return meta


def strip(tensor: Any) -> None:
    """Remove ``tensor``'s data in place (names, type and dims stay)."""
    for name in _DATA_FIELDS:
        tensor.ClearField(name)
    del tensor.external_data[:]
    tensor.ClearField("data_location")


@dataclass
class ModelParts:
    """A skeleton ModelProto plus its large initializers as numpy arrays (name → array).

    The arrays may be read-only views of a mapped file: derive new arrays, never write into them.
    """

    skeleton: Any  # onnx.ModelProto, large initializers without data
    weights: dict[str, np.ndarray]
    maps: list[mmap.mmap] = field(default_factory=list, repr=False, compare=False)

    def array(self, name: str) -> np.ndarray | None:
        """The value of an initializer (large or small), or None if ``name`` is not one."""
        from onnx import numpy_helper

        if name in self.weights:
            return self.weights[name]
        for init in self.skeleton.graph.initializer:
            if init.name == name:
                return numpy_helper.to_array(init)
        return None

    def copy(self) -> ModelParts:
        """A copy to rewrite: its own skeleton and weight dict, the same (shared, unmodified) arrays."""
        import onnx

        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(self.skeleton)
        return ModelParts(skeleton, dict(self.weights), list(self.maps))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.weights.values())

    def weightless(self, *, as_inputs: bool = False) -> Any:
        """``weightless_copy`` of the skeleton: the large initializers as inputs or placeholders."""
        return weightless_copy(self.skeleton, self.weights, as_inputs=as_inputs)

    def session_source(self, *, refer_to_files: bool = True) -> SessionSource:
        """What ``create_session`` takes to run this model without serialising or copying its weights.

        Weights that are views of a mapped file, as stored there, are referred to in that file (the
        folder holding most of them: onnxruntime maps it, nothing is copied); the others become
        in-memory placeholders with their arrays (onnxruntime copies those). ``refer_to_files=False``:
        every weight in memory, for a session that writes its optimised model (onnxruntime would keep
        the references, to a file outside the written model's folder).
        """
        import onnx

        names = [t.name for t in self.skeleton.graph.initializer if t.name in self.weights]
        regions = {n: file_region(self.weights[n]) if refer_to_files else None for n in names}
        by_folder: dict[Path, int] = {}
        for name, region in regions.items():
            if region is not None:
                by_folder[region[0].parent] = by_folder.get(region[0].parent, 0) + self.weights[name].nbytes
        folder = max(by_folder, key=lambda f: by_folder[f]) if by_folder else None
        skeleton = self.weightless()
        in_memory = []
        for init in skeleton.graph.initializer:
            if init.name not in self.weights:
                continue
            region = regions[init.name]
            if region is None or region[0].parent != folder:
                in_memory.append(init.name)
                continue
            del init.external_data[:]
            init.data_location = onnx.TensorProto.EXTERNAL
            where = {"location": region[0].name, "offset": region[1], "length": self.weights[init.name].nbytes}
            for key, value in where.items():
                init.external_data.add(key=key, value=str(value))
        referred = len(in_memory) < len(names)
        return SessionSource(skeleton, (in_memory, self.session_arrays(in_memory)), folder if referred else None)

    def session_arrays(self, names: Iterable[str]) -> list[np.ndarray]:
        """The weights ``names`` as onnxruntime takes them: C-contiguous and aligned (a view where it is both)."""
        return [np.require(self.weights[n], requirements=("C", "A")) for n in names]

    def full_model(self) -> Any:
        """A ModelProto with every weight inline (a copy of the weights: for tools that need one)."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.skeleton)
        for init in model.graph.initializer:
            array = self.weights.get(init.name)
            if array is not None:
                init.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
                del init.dims[:]
                init.dims.extend(array.shape)
                init.raw_data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
                self.release()  # the mapped pages just copied: not kept resident beside the copy
        return model

    def drop_unused_initializers(self) -> None:
        """Remove the initializers that no node and no graph output reads, and their arrays."""
        graph = self.skeleton.graph
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        keep = [init for init in graph.initializer if init.name in used]
        for init in graph.initializer:
            if init.name not in used:
                self.weights.pop(init.name, None)
        del graph.initializer[:]
        graph.initializer.extend(keep)

    def release(self) -> None:
        """Let the kernel drop the mapped pages read so far from this process (they stay in the page cache)."""
        for mapped in self.maps:
            release_mapping(mapped)


def release_mapping(mapped: mmap.mmap) -> None:
    """Drop the pages of a read-only file mapping from this process's resident set (re-read on next use)."""
    if not mapped.closed:
        mapped.madvise(mmap.MADV_DONTNEED)


def mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The file mapping ``array`` views, if any (following its ``base`` chain)."""
    base: Any = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return None


def _map(path: Path, maps: dict[Path, mmap.mmap]) -> mmap.mmap:
    if path not in maps:
        with open(path, "rb") as handle:
            mapped = FileMap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            mapped.path, mapped.identity = path.resolve(), _identity(os.fstat(handle.fileno()))
            maps[path] = mapped
    return maps[path]


def _external_array(init: Any, base: Path, maps: dict[Path, mmap.mmap]) -> np.ndarray:
    """A read-only view of ``init``'s external data (a copy where the bytes cannot be viewed as they are)."""
    import onnx
    from onnx import numpy_helper

    entries = {e.key: e.value for e in init.external_data}
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).newbyteorder("<")
    offset = int(entries.get("offset", 0))
    data_file = base / entries["location"]
    if dtype.kind not in "biufc" or offset % dtype.itemsize or not data_file.is_file():
        return numpy_helper.to_array(init, base_dir=str(base))  # unusual types, unaligned, or missing (raises)
    mapped = _map(data_file, maps)
    count = _elements(init)
    if offset + count * dtype.itemsize > len(mapped):
        raise OSError(f"{data_file} ends before the data of {init.name}: the external data is truncated")
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(tuple(init.dims))


def load_parts(path: Path, *, min_elements: int = LARGE_ELEMENTS) -> ModelParts:
    """Load ``path`` once, its large initializers as arrays viewing the file (mapped, never copied).

    Every externally stored initializer, and every inline one with more than ``min_elements``
    elements, becomes an array: a read-only view of the mapped data file or of the model file itself
    (``scan.split_raw_data`` finds the bytes without parsing them). A corrupt file is an ``InputError``.
    """
    import onnx
    from onnx import numpy_helper

    from onnx_pipeline.onnxfile.model import load_onnx
    from onnx_pipeline.onnxfile.scan import split_raw_data

    path = Path(path)
    maps: dict[Path, mmap.mmap] = {}
    raw: list[tuple[int, int] | None] = []
    model = None
    if path.is_file() and path.stat().st_size > 0:
        mapped = _map(path, maps)
        try:
            head, raw = split_raw_data(mapped, min_elements)
            model = onnx.ModelProto.FromString(head)
        except Exception:  # not a well-formed protobuf: load_onnx says what is wrong
            model = None
        if model is None or len(raw) != len(model.graph.initializer) or not (model.graph.node or model.graph.output):
            maps.clear()
            model, raw = None, []
    if model is None:
        model = load_onnx(path, load_external_data=False)
        raw = [None] * len(model.graph.initializer)
    weights: dict[str, np.ndarray] = {}
    for init, where in zip(model.graph.initializer, raw, strict=True):
        if init.data_location == onnx.TensorProto.EXTERNAL:
            array = _external_array(init, path.parent, maps)
        elif where is not None:
            array = _view(maps[path], init, where)
        elif _elements(init) > min_elements:
            array = numpy_helper.to_array(init)  # data in typed fields: one copy out of the protobuf
        else:
            continue
        weights[init.name] = array
        strip(init)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)  # a fresh arena: the stripped bytes of `model` are released with it
    del model
    return ModelParts(skeleton=skeleton, weights=weights, maps=list(maps.values()))


def _view(mapped: mmap.mmap, init: Any, where: tuple[int, int]) -> np.ndarray:
    """A read-only view of ``init``'s raw data at ``where`` = (offset, length) in the mapped model file."""
    import onnx

    from onnx_pipeline.errors import InputError

    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).newbyteorder("<")
    offset, length = where
    count = _elements(init)
    if count * dtype.itemsize != length:
        raise InputError(f"initializer {init.name!r} holds {length} bytes for {count} elements: re-export the model")
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(tuple(init.dims))


def split_model(model: Any, *, min_elements: int = LARGE_ELEMENTS) -> ModelParts:
    """``ModelParts`` of an in-memory model with its weights (copied out of it; ``model`` is not modified)."""
    from onnx import numpy_helper

    skeleton = model_skeleton(model)
    weights: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if _elements(init) > min_elements:
            weights[init.name] = numpy_helper.to_array(init)
            skeleton.graph.initializer.append(tensor_header(init))
        else:
            skeleton.graph.initializer.append(init)
    return ModelParts(skeleton, weights)


def model_skeleton(model: Any) -> Any:
    """A copy of ``model`` without its initializers (the caller adds what it wants, without copying the rest)."""
    import onnx

    out = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if model.HasField(name):
            setattr(out, name, getattr(model, name))
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    graph, source = out.graph, model.graph
    if source.HasField("name"):
        graph.name = source.name
    if source.HasField("doc_string"):
        graph.doc_string = source.doc_string
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    graph.sparse_initializer.extend(source.sparse_initializer)
    graph.quantization_annotation.extend(source.quantization_annotation)
    graph.metadata_props.extend(source.metadata_props)
    return out


def weightless_copy(model: Any, names: Collection[str], *, as_inputs: bool = False) -> Any:
    """A copy of ``model`` in which the initializers ``names`` carry no data; nothing large is copied.

    ``as_inputs``: they become graph inputs of the same name, type and shape (what onnx's shape
    inference and version converter, and simplifiers, need; ``restore_initializers`` puts them
    back). Otherwise they become external-data placeholders, for onnxruntime with the arrays handed
    over in memory (``create_session(..., external_initializers=...)``).
    """
    import onnx
    from onnx import helper

    copy = model_skeleton(model)
    graph = copy.graph
    for init in model.graph.initializer:
        if init.name not in names:
            graph.initializer.append(init)
        elif as_inputs:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            placeholder = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
            placeholder.data_location = onnx.TensorProto.EXTERNAL
            placeholder.external_data.add(key="location", value=IN_MEMORY)
            graph.initializer.append(placeholder)
    return copy


def restore_initializers(model: Any, tensors: Iterable[Any]) -> None:
    """Undo ``weightless_copy(as_inputs=True)`` on a model derived from the copy: inputs back to initializers.

    Only the tensors the model still uses come back.
    """
    tensors = list(tensors)
    names = {t.name for t in tensors}
    inputs = [v for v in model.graph.input if v.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    model.graph.initializer.extend(t for t in tensors if t.name in used)


def large_initializers(model: Any, min_elements: int = LARGE_ELEMENTS) -> set[str]:
    """Names of the initializers a weightless copy leaves out: external, or over ``min_elements`` elements."""
    import onnx

    return {
        t.name
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL or _elements(t) > min_elements
    }


def infer_shapes(model: Any) -> None:
    """Run ONNX shape inference on ``model`` in place, on a weightless copy (the weights are not serialized)."""
    import onnx

    skeleton = weightless_copy(model, large_initializers(model))
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
