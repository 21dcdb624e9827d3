"""ONNX graph helpers for the Vitis AI bundle: weight-less skeletons, opset-17 rewriting, streaming writes.

A VGG16-size model is never held twice: large initializers live once as numpy arrays beside a
skeleton ``ModelProto`` whose tensors carry names, types and shapes but no data. The skeleton is what
shape inference, rewriting and the DPU report work on; :func:`write_model` streams the arrays into
the file without building a second copy (protobuf merges repeated occurrences of the ``graph`` field,
so each large initializer is appended as its own small ``graph`` message).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.errors import BundleError
from onnx_pipeline.onnxfile import PROTOBUF_LIMIT as _PROTOBUF_LIMIT
from onnx_pipeline.onnxfile import topological_sort
from onnx_pipeline.onnxfile import varint as _varint

log = logging.getLogger(__name__)

TARGET_OPSET = 17
TARGET_IR_VERSION = 8  # the IR version that goes with opset 17
_LARGE = 1024  # initializers with more elements than this live outside the skeleton
_SPATIAL_REDUCE = {"ReduceMean": "GlobalAveragePool", "ReduceMax": "GlobalMaxPool"}


@dataclass
class ModelParts:
    """A skeleton ModelProto plus its large initializers as numpy arrays (name → array)."""

    skeleton: Any  # onnx.ModelProto, large initializers without data
    weights: dict[str, np.ndarray]

    def array(self, name: str) -> np.ndarray | None:
        """The value of an initializer (large or small), or None if ``name`` is not one."""
        from onnx import numpy_helper

        if name in self.weights:
            return self.weights[name]
        for init in self.skeleton.graph.initializer:
            if init.name == name:
                return numpy_helper.to_array(init)
        return None


def load_parts(path: Path) -> ModelParts:
    """Load a model once, moving every large initializer out into a numpy array."""
    import onnx
    from onnx import external_data_helper, numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError...
        raise BundleError(f"cannot read {path} as an ONNX model ({type(exc).__name__}: {exc})") from None
    weights: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if external_data_helper.uses_external_data(init):
            info = {e.key: e.value for e in init.external_data}
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            count = int(np.prod(init.dims)) if init.dims else 1
            data_path = path.parent / info["location"]
            array = np.fromfile(data_path, dtype=dtype, count=count, offset=int(info.get("offset", 0)))
            array = array.reshape(tuple(init.dims))
        elif int(np.prod(init.dims)) > _LARGE if init.dims else False:
            array = numpy_helper.to_array(init)  # one copy out of the protobuf (no second one)
        else:
            continue
        weights[init.name] = array
        _strip(init)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)  # a fresh arena: the stripped bytes of `model` are released with it
    del model
    return ModelParts(skeleton=skeleton, weights=weights)


def _strip(init: Any) -> None:
    for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        init.ClearField(name)  # type: ignore[arg-type]
    del init.external_data[:]
    init.data_location = 0


def to_static_opset17(parts: ModelParts) -> list[str]:
    """Rewrite in place: batch 1, opset 17 (default domain only), spatial reductions as global pools.

    Returns the rewrites made (for the log). Raises ``BundleError`` for what cannot be expressed.
    """
    from onnx import helper

    model = parts.skeleton
    graph = model.graph
    notes: list[str] = []
    domains = {o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")}
    foreign = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise BundleError(f"the model uses non-default-domain operators {foreign}: Vitis AI needs plain ONNX ops")
    if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        raise BundleError("the model has control flow (If/Loop/Scan): the DPU flow needs a static graph")
    source_opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=TARGET_OPSET)
    if source_opset < TARGET_OPSET:
        _upgrade_to_opset17(parts, source_opset)
        notes.append(f"opset {source_opset} → {TARGET_OPSET} (onnx.version_converter on the weight-less graph)")
        model, graph = parts.skeleton, parts.skeleton.graph

    initializer_names = {i.name for i in graph.initializer}
    for value in list(graph.input) + list(graph.output):
        if value.name in initializer_names or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if (len(dims) and not dims[0].HasField("dim_value")) or (len(dims) and dims[0].dim_value != 1):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
            notes.append(f"{value.name}: batch fixed to 1")
        for i, dim in enumerate(dims[1:], start=1):
            if not dim.HasField("dim_value"):
                raise BundleError(f"{value.name} has a dynamic dimension {i} ({dim.dim_param!r}): export it static")
    del graph.value_info[:]

    consts = {i.name: i for i in graph.initializer}
    for node in list(graph.node):
        _rewrite_for_opset17(node, consts, notes)
    _spatial_reductions_to_global_pool(graph, notes)
    _remove_unused_initializers(parts)

    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", TARGET_OPSET))
    for domain in sorted(domains):
        log.debug("dropping unused opset import %s", domain)
    model.ir_version = TARGET_IR_VERSION
    topological_sort(graph)
    infer_shapes(parts)
    return notes


def _rewrite_for_opset17(node: Any, consts: dict[str, Any], notes: list[str]) -> None:
    """One node in place: Reduce* axes input → attribute; refuse what opset 17 cannot express."""
    import onnx
    from onnx import helper

    if (
        node.op_type
        in (
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        )
        and len(node.input) > 1
    ):
        axes_name = node.input[1]
        if axes_name not in consts:
            raise BundleError(f"{node.op_type} '{node.name}' takes its axes from a computed tensor: not static")
        axes = [int(a) for a in onnx.numpy_helper.to_array(consts[axes_name]).ravel()]
        attrs = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
        del node.attribute[:]
        node.attribute.extend(attrs)
        node.attribute.append(helper.make_attribute("axes", axes))
        del node.input[1:]
        notes.append(f"{node.name}: axes input → attribute")
    elif node.op_type in ("ReduceMean", "ReduceMax") or node.op_type.startswith("Reduce"):
        for attr in list(node.attribute):
            if attr.name == "noop_with_empty_axes":
                if attr.i:
                    raise BundleError(f"{node.op_type} '{node.name}' uses noop_with_empty_axes=1 (opset 18+)")
                node.attribute.remove(attr)
    elif node.op_type == "Split" and any(a.name == "num_outputs" for a in node.attribute):
        raise BundleError(f"Split '{node.name}' uses num_outputs (opset 18+): export with explicit split sizes")
    elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
        raise BundleError(f"Pad '{node.name}' uses the axes input (opset 18+)")
    elif node.op_type == "Resize":
        for attr in list(node.attribute):
            if attr.name in ("antialias", "keep_aspect_ratio_policy", "axes"):
                if attr.name == "antialias" and attr.i:
                    raise BundleError(f"Resize '{node.name}' uses antialias=1 (opset 18+)")
                node.attribute.remove(attr)
    elif (
        node.op_type
        in (
            "Col2Im",
            "GroupNormalization",
            "BitwiseAnd",
            "BitwiseOr",
            "BitwiseXor",
            "BitwiseNot",
            "CenterCropPad",
            "Mish",
            "DFT",
            "AffineGrid",
            "Gelu",
            "ImageDecoder",
            "RMSNormalization",
        )
        and onnx.defs.has(node.op_type)
        and onnx.defs.get_schema(node.op_type, TARGET_OPSET).since_version > 17
    ):
        raise BundleError(f"{node.op_type} '{node.name}' does not exist at opset 17")


def _upgrade_to_opset17(parts: ModelParts, source_opset: int) -> None:
    """onnx.version_converter on a probe whose large initializers are typed graph inputs (no data copied)."""
    import onnx
    from onnx import helper, version_converter

    model = parts.skeleton
    large = [i for i in model.graph.initializer if i.name in parts.weights]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    kept = [i for i in probe.graph.initializer if i.name not in parts.weights]
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(kept)
    probe.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in large)
    try:
        converted = version_converter.convert_version(probe, TARGET_OPSET)
    except Exception as exc:
        raise BundleError(f"cannot convert the model from opset {source_opset} to 17: {exc}") from None
    names = {i.name for i in large}
    inputs = [v for v in converted.graph.input if v.name not in names]
    del converted.graph.input[:]
    converted.graph.input.extend(inputs)
    converted.graph.initializer.extend(large)
    parts.skeleton = converted


def _spatial_reductions_to_global_pool(graph: Any, notes: list[str]) -> None:
    """ReduceMean/ReduceMax over H, W of a 4-D tensor → GlobalAveragePool/GlobalMaxPool (+ Flatten)."""
    from onnx import helper

    new_nodes = []
    for node in graph.node:
        target = _SPATIAL_REDUCE.get(node.op_type)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = sorted(int(a) for a in attrs.get("axes", []))
        if target is None or len(node.input) != 1 or axes not in ([2, 3], [-2, -1]):
            new_nodes.append(node)
            continue
        if attrs.get("keepdims", 1):
            new_nodes.append(helper.make_node(target, [node.input[0]], [node.output[0]], name=node.name))
        else:
            pooled = f"{node.output[0]}__pooled"
            new_nodes.append(helper.make_node(target, [node.input[0]], [pooled], name=node.name))
            new_nodes.append(helper.make_node("Flatten", [pooled], [node.output[0]], name=f"{node.name}__flatten"))
        notes.append(f"{node.name}: {node.op_type} over H, W → {target}")
    del graph.node[:]
    graph.node.extend(new_nodes)


def _remove_unused_initializers(parts: ModelParts) -> None:
    graph = parts.skeleton.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    for init in graph.initializer:
        if init.name not in used:
            parts.weights.pop(init.name, None)
    del graph.initializer[:]
    graph.initializer.extend(keep)


def infer_shapes(parts: ModelParts) -> None:
    """Strict shape inference on the skeleton (weights are typed graph inputs while it runs)."""
    import onnx
    from onnx import helper

    model = parts.skeleton
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    large = {name for name in parts.weights}
    kept = [i for i in probe.graph.initializer if i.name not in large]
    typed = [
        helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in probe.graph.initializer
        if i.name in large
    ]
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(kept)
    probe.graph.input.extend(typed)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise BundleError(f"shape inference failed on the static opset-17 model: {exc}") from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)


def shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Static shape of every typed tensor (inputs, outputs, value_info, initializers)."""
    out: dict[str, tuple[int, ...]] = {}
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            out[value.name] = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _field(number: int, payload_len: int) -> bytes:
    return _varint((number << 3) | 2) + _varint(payload_len)


_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


def write_model(
    skeleton: Any, weights: dict[str, np.ndarray], path: Path, *, order: Iterable[str] | None = None
) -> int:
    """Write ``skeleton`` with ``weights`` filled in, streaming each array once; returns the file size.

    Every skeleton initializer named in ``weights`` is written with its data; the skeleton itself is
    not modified. Models over protobuf's 2 GiB limit raise ``BundleError``.
    """
    import onnx

    names = list(order) if order is not None else [i.name for i in skeleton.graph.initializer if i.name in weights]
    total = sum(weights[n].nbytes for n in names)
    if total > _PROTOBUF_LIMIT - (64 << 20):
        raise BundleError(f"the model's weights are {total / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit")
    head = onnx.ModelProto()
    head.CopyFrom(skeleton)
    meta = {i.name: i for i in head.graph.initializer}
    headers: dict[str, bytes] = {}
    for name in names:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(meta[name])
        _strip(tensor)
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(weights[name].dtype)
        del tensor.dims[:]
        tensor.dims.extend(weights[name].shape)
        headers[name] = tensor.SerializeToString()
    keep = [i for i in head.graph.initializer if i.name not in headers]
    del head.graph.initializer[:]
    head.graph.initializer.extend(keep)
    with open(path, "wb") as handle:
        handle.write(head.SerializeToString())
        for name in names:
            array = np.ascontiguousarray(weights[name])
            little = array if array.dtype.byteorder in ("<", "=", "|") else array.astype(array.dtype.newbyteorder("<"))
            raw_len = little.nbytes
            tensor_len = len(headers[name]) + len(_field(_RAW_DATA_FIELD, raw_len)) + raw_len
            graph_len = len(_field(_INITIALIZER_FIELD, tensor_len)) + tensor_len
            handle.write(_field(_GRAPH_FIELD, graph_len))
            handle.write(_field(_INITIALIZER_FIELD, tensor_len))
            handle.write(headers[name])
            handle.write(_field(_RAW_DATA_FIELD, raw_len))
            handle.write(little.data.cast("B"))
        size = handle.tell()
    return size


def write_model_external(skeleton: Any, weights: dict[str, np.ndarray], path: Path) -> None:
    """Write ``skeleton`` with ``weights`` as page-aligned external data in ``<path>.data``.

    onnxruntime then reads (or maps) each tensor straight from the data file instead of parsing a
    second in-memory copy of the whole model: the calibration session costs one copy of the weights.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(skeleton)
    data_name = path.name + ".data"
    page = 4096
    with open(path.parent / data_name, "wb") as handle:
        for init in model.graph.initializer:
            if init.name not in weights:
                continue
            array = np.ascontiguousarray(weights[init.name])
            offset = handle.tell()
            if offset % page:
                handle.write(b"\0" * (page - offset % page))
                offset = handle.tell()
            handle.write(array.data.cast("B"))
            _strip(init)
            init.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            init.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())


def check_model_file(path: Path) -> None:
    """onnx.checker (full check, from the file so nothing is copied); a failure is a ``BundleError``."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise BundleError(f"onnx.checker rejects {path.name}: {exc}") from None
