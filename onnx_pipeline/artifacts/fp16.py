"""``fp16``: ``model.fp16.onnx``, fp16 inside, fp32 inputs and outputs, loading in onnxruntime.

The graph is rewritten by ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``,
run once on the weightless graph: each large initializer is a stand-in of no elements, so the
converter decides what it always decides (which initializers become fp16, where Casts go) without
walking 138 M weights through Python. The weights it turned to fp16 are then cast in bulk with numpy,
with the converter's own clamping (``cast_to_fp16``: the same bits as its ``convert_np_to_float16``).
The target's ``op_block_list`` is added to the converter's default block list (passing a list
replaces that default, which would convert ops such as TopK or Range that have no fp16 kernel).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from onnx_pipeline.artifacts._fallback import LoweredModel, sensitivity_and_fallback
from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, timed
from onnx_pipeline.errors import BundleError, first_line
from onnx_pipeline.onnxfile import ModelParts, split_model, strip, write_model
from onnx_pipeline.onnxfile.parts import tensor_header
from onnx_pipeline.runtime.session import create_session
from onnx_pipeline.targets import Fp16Spec

SPEC = BuilderSpec("fp16", "fp16", order=40, requires=("fp16",), default_rank=30)
FILE = "model.fp16.onnx"
#: the converter's defaults (``convert_float_to_float16``'s min_positive_val and max_finite_val)
MIN_POSITIVE = 5.96e-08
MAX_FINITE = 65504.0
_CHUNK = 1 << 22
#: names the converter gives the Cast outputs it adds before blocked (fp32) consumers of an fp16 tensor
_CAST_SUFFIXES = ("_cast_to_fp32", "_cast_to_bfloat16")


def cast_to_fp16(values: np.ndarray) -> np.ndarray:
    """float32 → float16 as the converter casts: magnitudes below MIN_POSITIVE become ±MIN_POSITIVE,
    finite ones above MAX_FINITE become ±MAX_FINITE, zero, inf and NaN stay; then round to nearest.

    In chunks, in two threads (numpy releases the GIL), without a float64 temporary.
    """
    flat = np.ascontiguousarray(values).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float16)
    low, high = np.float32(MIN_POSITIVE), np.float32(MAX_FINITE)

    def convert(start: int) -> None:
        chunk = np.array(flat[start : start + _CHUNK], dtype=np.float32)
        magnitude = np.abs(chunk)
        np.copysign(low, chunk, out=chunk, where=(magnitude > 0) & (magnitude < low))
        np.copysign(high, chunk, out=chunk, where=(magnitude > high) & (magnitude < np.inf))
        out[start : start + _CHUNK] = chunk

    starts = range(0, flat.size, _CHUNK)
    if len(starts) > 1:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(convert, starts))
    else:
        for start in starts:
            convert(start)
    return out.reshape(values.shape)


def _stand_ins(parts: ModelParts) -> Any:
    """The skeleton with every large initializer as an empty tensor of its name and type (no data to walk)."""
    from onnx_pipeline.onnxfile import model_skeleton

    model = model_skeleton(parts.skeleton)
    for init in parts.skeleton.graph.initializer:
        if init.name in parts.weights:
            stand_in = tensor_header(init)
            del stand_in.dims[:]
            stand_in.dims.append(0)
            stand_in.raw_data = b""
            model.graph.initializer.append(stand_in)
        else:
            model.graph.initializer.append(init)
    return model


def _restore(converted: Any, parts: ModelParts) -> ModelParts:
    """Put the real shapes back on the stand-ins and cast the weights the converter made fp16."""
    from onnx import TensorProto

    weights: dict[str, np.ndarray] = {}
    for init in converted.graph.initializer:
        array = parts.weights.get(init.name)
        if array is None:
            continue
        strip(init)
        del init.dims[:]
        init.dims.extend(array.shape)
        fp16 = init.data_type == TensorProto.FLOAT16 and array.dtype == np.float32
        weights[init.name] = cast_to_fp16(array) if fp16 else array
    # Casts the converter put before blocked consumers of a weight took their shape from the stand-in.
    for value in converted.graph.value_info:
        for suffix in _CAST_SUFFIXES:
            name = value.name[: -len(suffix)] if value.name.endswith(suffix) else None
            if name is not None and name in parts.weights:
                shape = value.type.tensor_type.shape
                del shape.dim[:]
                for size in parts.weights[name].shape:
                    shape.dim.add().dim_value = size
    return ModelParts(converted, weights)


def convert_fp16(model: ModelParts | Any, spec: Fp16Spec) -> ModelParts:
    """An fp16 copy (``ModelParts``) of ``model`` with fp32 graph inputs/outputs; ``model`` is not modified.

    ``model`` (``ModelParts`` or a ModelProto) must carry shape information (``onnxfile.infer_shapes``).
    Raises ``BundleError`` if the converter fails or changes the inputs/outputs.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    parts = model if isinstance(model, ModelParts) else split_model(model)
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(spec.op_block_list))
    try:
        # Already shape-inferred: re-inferring would only repeat it.
        converted = convert_float_to_float16(
            _stand_ins(parts), keep_io_types=spec.keep_io_types, op_block_list=block, disable_shape_infer=True
        )
    except Exception as exc:  # the converter raises assorted errors on graphs it cannot handle
        raise BundleError(
            f"fp16 conversion failed ({type(exc).__name__}: {first_line(exc)}): add the op to [fp16] op_block_list"
        ) from None
    check_io_float32(parts.skeleton, converted)
    return _restore(converted, parts)


def check_io_float32(original: Any, converted: Any) -> None:
    """Raise BundleError unless the converted model's inputs and outputs keep the original names and dtypes."""

    def signature(model: Any) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]

    if signature(original) != signature(converted):
        raise BundleError(
            f"fp16 conversion changed the model's inputs/outputs: {signature(original)} -> {signature(converted)}"
        )


def build(ctx: BuildContext) -> ArtifactResult:
    spec = ctx.target.fp16
    assert spec is not None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    converted = convert_fp16(ctx.parts, spec)
    ctx.parts.release()
    timed(timings, "convert", start)
    start = time.perf_counter()
    written = write_model(converted.skeleton, ctx.out / FILE, weights=converted.weights)
    graph = converted.skeleton.graph
    blocked = set(spec.op_block_list)
    section = {
        "file": FILE,
        "keep_io_types": True,
        "op_block_list": list(spec.op_block_list),
        "ops_kept_fp32": sorted({n.op_type for n in graph.node if n.op_type in blocked}),
        "casts": sum(1 for n in graph.node if n.op_type == "Cast"),
    }
    del converted, graph
    timed(timings, "write", start)
    session = create_session(
        ctx.out / FILE, what="the fp16 model (add the failing op to [fp16] op_block_list in the target profile)"
    )
    model = ctx.check(FILE, SPEC.kind, SPEC.precision, session=session)
    del session
    lowered = LoweredModel(FILE, SPEC.kind, SPEC.precision, ctx.parts, ctx.thresholds(SPEC.precision), half=True)
    repair = sensitivity_and_fallback(ctx, lowered, model)
    section.update(repair.section)
    where = f" (weights in `{written.data_file}`)" if written.data_file else ""
    return ArtifactResult(
        kind=SPEC.kind,
        models=(repair.model,),
        section=section,
        timings={**timings, **repair.timings},
        readme=(
            f"- `{FILE}`: fp16 inside, fp32 inputs and outputs ({section['casts']} casts){where}"
            + (f"; {len(repair.kept)} layer(s) kept in float32" if repair.kept else ""),
        ),
        hashes=repair.hashes or written.hashes(ctx.out),
    )
