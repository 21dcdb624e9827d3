"""ONNX graph helpers for the Vitis AI bundle: opset-17 rewriting of a ``ModelParts`` skeleton, and writing it.

A VGG16-size model is never held twice: the skeleton (``onnxfile.ModelParts``) carries names, types
and shapes, the large initializers live once as numpy arrays. Shape inference and the version
converter see a weightless copy (``onnxfile.weightless_copy``); files are written by the one
streaming writer (``onnxfile.write_model``), as one file when the model fits in one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.errors import BundleError, InputError
from onnx_pipeline.onnxfile import ModelParts, restore_initializers, topological_sort, weightless_copy
from onnx_pipeline.onnxfile import load_parts as _load_parts
from onnx_pipeline.onnxfile import write_model as _write_model

log = logging.getLogger(__name__)

TARGET_OPSET = 17
TARGET_IR_VERSION = 8  # the IR version that goes with opset 17
_SPATIAL_REDUCE = {"ReduceMean": "GlobalAveragePool", "ReduceMax": "GlobalMaxPool"}

__all__ = ["ModelParts", "load_parts", "shapes", "to_static_opset17", "topological_sort", "write_model"]


def load_parts(path: Path) -> ModelParts:
    """Load a model once, every large initializer as an array (external data mapped, not read)."""
    try:
        return _load_parts(path)
    except (InputError, OSError) as exc:
        raise BundleError(f"cannot read {path} as an ONNX model ({exc})") from None


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

    _rewrite_nodes(graph, notes)
    _spatial_reductions_to_global_pool(graph, notes)
    parts.drop_unused_initializers()

    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", TARGET_OPSET))
    for domain in sorted(domains):
        log.debug("dropping unused opset import %s", domain)
    model.ir_version = TARGET_IR_VERSION
    topological_sort(graph)
    infer_shapes(parts)
    return notes


def _rewrite_nodes(graph: Any, notes: list[str]) -> None:
    """Per node: reduction axes as attributes, opset-18+ attributes removed, or a ``BundleError`` saying why not."""
    consts = {i.name: i for i in graph.initializer}
    for node in list(graph.node):
        _rewrite_for_opset17(node, consts, notes)


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
    """onnx.version_converter on a weightless copy (the large initializers as typed inputs, no data copied)."""
    from onnx import version_converter

    large = [i for i in parts.skeleton.graph.initializer if i.name in parts.weights]
    probe = weightless_copy(parts.skeleton, parts.weights, as_inputs=True)
    try:
        converted = version_converter.convert_version(probe, TARGET_OPSET)
    except Exception as exc:
        raise BundleError(f"cannot convert the model from opset {source_opset} to 17: {exc}") from None
    restore_initializers(converted, large)
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


def infer_shapes(parts: ModelParts) -> None:
    """Strict shape inference on the skeleton (weights are typed graph inputs while it runs)."""
    import onnx

    model = parts.skeleton
    probe = weightless_copy(model, parts.weights, as_inputs=True)
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


def write_model(
    skeleton: Any, weights: dict[str, np.ndarray], path: Path, *, order: Iterable[str] | None = None
) -> int:
    """Write ``skeleton`` with ``weights`` filled in, streaming each array once; returns the file size.

    One file when it fits under protobuf's 2 GiB limit, else the weights in ``<path>.data``. The
    large initializers are written after the others (``order``: in that order), each with
    ``data_location: DEFAULT``, as this bundle has always written them. The skeleton is not modified.
    """
    names = list(order) if order is not None else [i.name for i in skeleton.graph.initializer if i.name in weights]
    written = _write_model(skeleton, path, weights=weights, order=names, explicit_location=True)
    return written.size


def write_model_external(skeleton: Any, weights: dict[str, np.ndarray], path: Path) -> None:
    """Write ``skeleton`` with ``weights`` as page-aligned external data in ``<path>.data``.

    onnxruntime then reads (or maps) each tensor straight from the data file instead of parsing a
    second in-memory copy of the whole model: the calibration session costs one copy of the weights.
    """
    _write_model(skeleton, path, weights=weights, external=True)


def check_model_file(path: Path) -> None:
    """onnx.checker (full check, from the file so nothing is copied); a failure is a ``BundleError``."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise BundleError(f"onnx.checker rejects {path.name}: {exc}") from None
