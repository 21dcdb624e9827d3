"""Keep chosen layers of a lowered model (QDQ int8, XINT8, fp16) in float32, by rewriting its graph.

A layer is a node of the float model, found in the lowered one by its output tensor (the converters
keep the float model's tensor names): the node itself, or for a power-of-two model (``t__float`` →
QuantizeLinear → DequantizeLinear → ``t``) the node before that pair. Kept in float, it computes on
float32 inputs with the float model's own weights:

- QDQ: an input read through DequantizeLinear is read before its QuantizeLinear instead (an
  activation), or from the float model's initializer (a weight or bias, dequantized from int8/int32);
- fp16: each activation input is cast to float32, the weights are the float model's, and the output
  is cast back to float16 for the layers after it.

Its output is lowered as before (quantized again where the next layer reads it quantized), as
onnxruntime's ``nodes_to_exclude`` and TensorRT's per-layer precision do. The result is a
``ModelParts`` (the lowered model's arrays shared, the float weights added), ready to run or write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_pipeline.onnxfile import ModelParts

#: the suffix of a float weight added beside its lowered form
FLOAT_SUFFIX = "__kept_float"


@dataclass(frozen=True)
class LayerMatch:
    """One float-model node and the lowered model's node that computes it."""

    name: str
    op_type: str
    tensor: str
    lowered_node: str
    #: it reads a dequantized or half-precision input (it is lowered, so keeping it in float changes it)
    lowered: bool


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output if out}


def lowered_node(tensor: str, producers: dict[str, Any]) -> Any | None:
    """The lowered model's node computing ``tensor`` (before a QuantizeLinear/DequantizeLinear pair)."""
    node = producers.get(tensor)
    if node is not None and node.op_type == "DequantizeLinear":
        q = producers.get(node.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return producers.get(q.input[0])
    return node


def match_layers(reference: Any, lowered: Any, op_types: Sequence[str], *, half: bool) -> list[LayerMatch]:
    """The float model's nodes of ``op_types`` (graph order) that the lowered model computes lowered.

    Found by output tensor, else by node name (onnxruntime's quantizer folds a ReLU into the Conv before
    it: the Conv keeps its name and writes the ReLU's tensor, the one compared).
    """
    producers = _producers(lowered.graph)
    by_name = {n.name: n for n in lowered.graph.node if n.name}
    initializers = {t.name for t in lowered.graph.initializer}
    half_tensors = _half_tensors(lowered) if half else set()
    matches = []
    for node in reference.graph.node:
        if node.op_type not in op_types or not node.output:
            continue
        found = find_lowered(node, producers, by_name)
        if found is None or len(found.input) != len(node.input):
            continue
        # the tensor compared: the float model's output, or the ReLU's tensor the fused Conv writes
        tensor = node.output[0] if node.output[0] in producers else str(found.output[0])
        is_lowered = any(
            (p := producers.get(i)) is not None and p.op_type == "DequantizeLinear" for i in found.input
        ) or any(i in half_tensors and i not in initializers for i in found.input)
        matches.append(LayerMatch(node.name, node.op_type, tensor, found.name, is_lowered))
    return matches


def find_lowered(node: Any, producers: dict[str, Any], by_name: dict[str, Any]) -> Any | None:
    """The lowered model's node for the float model's ``node`` (by output tensor, else by name), same op."""
    found = lowered_node(node.output[0], producers)
    if found is None or found.op_type != node.op_type:
        found = by_name.get(node.name)
    return found if found is not None and found.op_type == node.op_type else None


def _half_tensors(model: Any) -> set[str]:
    from onnx import TensorProto

    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    names = {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    names |= {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16}
    names |= {n.output[0] for n in model.graph.node if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT16}
    return names


def _cast_to(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "to"), 0)


def _header(name: str, array: np.ndarray) -> Any:
    """An initializer that names ``array`` (its bytes are given as ``ModelParts.weights``)."""
    from onnx import TensorProto, helper

    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    return tensor


def keep_in_float(lowered: ModelParts, reference: ModelParts, layers: Sequence[str], *, half: bool) -> ModelParts:
    """A copy of ``lowered`` with ``layers`` (float-model node names) computed in float32.

    ``layers`` come from ``match_layers``; a name it does not find raises ``KeyError`` (a bug).
    """
    from onnx import TensorProto, helper

    parts = ModelParts(_copy(lowered.skeleton), dict(lowered.weights), list(lowered.maps))
    graph = parts.skeleton.graph
    by_name = {n.name: n for n in reference.skeleton.graph.node}
    ref_inits = {t.name for t in reference.skeleton.graph.initializer}
    ref_producers = _producers(reference.skeleton.graph)
    producers = _producers(graph)
    for layer in layers:
        ref = by_name[layer]
        node = find_lowered(ref, producers, {n.name: n for n in graph.node if n.name})
        if node is None:
            raise KeyError(layer)
        new_inputs: list[str] = []
        before: list[Any] = []
        for index, (name, ref_name) in enumerate(zip(node.input, ref.input, strict=True)):
            if not name:
                new_inputs.append(name)
            elif ref_name in ref_inits:
                new_inputs.append(_add_float_weight(parts, reference, ref_name))
            elif (source := _unquantized(name, producers)) is not None:
                folded = _folded_activation(ref_producers.get(ref_name), producers.get(source))
                if folded is not None:  # the quantizer let QuantizeLinear's range do a ReLU: do it in float
                    source = _apply(parts, reference, folded, source, before)
                new_inputs.append(source)
            elif half:
                cast = f"{node.name}__input{index}_float"
                before.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT, name=cast))
                new_inputs.append(cast)
            else:
                new_inputs.append(name)
        del node.input[:]
        node.input.extend(new_inputs)
        after = []
        if half:
            outputs = list(node.output)
            del node.output[:]
            for out in outputs:
                node.output.append(f"{out}__float" if out else out)
                if out:
                    after.append(helper.make_node("Cast", [f"{out}__float"], [out], to=TensorProto.FLOAT16,
                                                  name=f"{out}__to_half"))  # fmt: skip
        _insert_around(graph, node, before, after)
        producers = _producers(graph)
    _drop_unused(parts)
    return parts


def _copy(model: Any) -> Any:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _unquantized(name: str, producers: dict[str, Any]) -> str | None:
    """The float tensor a DequantizeLinear output was quantized from, or None (not a QDQ activation)."""
    dq = producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producers.get(dq.input[0])
    return str(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None


#: activations onnxruntime's quantizer folds into the QuantizeLinear after a Conv/Gemm (its range clips)
_FOLDABLE = ("Relu", "Clip")


def _folded_activation(reference_producer: Any, lowered_producer: Any) -> Any | None:
    """The float model's ReLU/Clip that the lowered model dropped before a QuantizeLinear, or None."""
    if reference_producer is None or reference_producer.op_type not in _FOLDABLE:
        return None
    if lowered_producer is not None and lowered_producer.op_type == reference_producer.op_type:
        return None
    return reference_producer


def _apply(parts: ModelParts, reference: ModelParts, activation: Any, source: str, before: list[Any]) -> str:
    """Add ``activation`` (a float-model node) on ``source`` before the kept layer; returns its output."""
    out = f"{source}__{activation.op_type.lower()}"
    if any(out in n.output for n in before) or any(out in n.output for n in parts.skeleton.graph.node):
        return out
    extra = [_add_float_weight(parts, reference, i) if i else i for i in activation.input[1:]]
    node = type(activation)()
    node.CopyFrom(activation)
    node.name = out
    del node.input[:]
    node.input.extend([source, *extra])
    del node.output[:]
    node.output.append(out)
    before.append(node)
    return out


def _add_float_weight(parts: ModelParts, reference: ModelParts, name: str) -> str:
    array = reference.array(name)
    assert array is not None  # an initializer of the reference, by the caller's check
    new = f"{name}{FLOAT_SUFFIX}"
    if new not in parts.weights:
        parts.skeleton.graph.initializer.append(_header(new, array))
        parts.weights[new] = array
    return new


def _insert_around(graph: Any, node: Any, before: list[Any], after: list[Any]) -> None:
    nodes = list(graph.node)
    index = next(i for i, n in enumerate(nodes) if n is node or n.name == node.name)
    rebuilt = [*nodes[:index], *before, nodes[index], *after, *nodes[index + 1 :]]
    del graph.node[:]
    graph.node.extend(rebuilt)


def _drop_unused(parts: ModelParts) -> None:
    """Remove the nodes whose outputs nobody reads (the QDQ pairs a kept layer no longer uses) and unused weights."""
    graph = parts.skeleton.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    parts.drop_unused_initializers()
    names = (
        {t.name for t in graph.initializer}
        | {i for n in graph.node for i in n.input}
        | {o for n in graph.node for o in n.output}
    )
    infos = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(infos)
