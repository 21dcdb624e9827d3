"""``fp16``: ``model.fp16.onnx``, fp16 inside, fp32 inputs and outputs, loading in onnxruntime.

Uses ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``. The
target's ``op_block_list`` is added to the converter's own default block list (passing a list
replaces that default, which would convert ops such as TopK or Range that have no fp16 kernel).
"""

from __future__ import annotations

import time
from typing import Any

from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, timed
from onnx_pipeline.errors import BundleError, first_line
from onnx_pipeline.runtime.session import create_session
from onnx_pipeline.targets import Fp16Spec

SPEC = BuilderSpec("fp16", "fp16", order=40, requires=("fp16",), default_rank=30)
FILE = "model.fp16.onnx"


def convert_fp16(model: Any, spec: Fp16Spec) -> Any:
    """An fp16 copy of ``model`` with fp32 graph inputs/outputs; raises BundleError if it does not load.

    ``model`` must carry shape information (``onnxfile.infer_shapes``); it is not modified.
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    work = onnx.ModelProto()
    work.CopyFrom(model)
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(spec.op_block_list))
    try:
        # The bundle step's model is already shape-inferred: re-inferring would serialize every weight again.
        converted = convert_float_to_float16(
            work, keep_io_types=spec.keep_io_types, op_block_list=block, disable_shape_infer=True
        )
    except Exception as exc:  # the converter raises assorted errors on graphs it cannot handle
        raise BundleError(
            f"fp16 conversion failed ({type(exc).__name__}: {first_line(exc)}): add the op to [fp16] op_block_list"
        ) from None
    check_io_float32(model, converted)
    create_session(
        converted.SerializeToString(),
        what="the fp16 model (add the failing op to [fp16] op_block_list in the target profile)",
    )
    return converted


def check_io_float32(original: Any, converted: Any) -> None:
    """Raise BundleError unless the converted model's inputs and outputs keep the original names and dtypes."""

    def signature(model: Any) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]

    if signature(original) != signature(converted):
        raise BundleError(
            f"fp16 conversion changed the model's inputs/outputs: {signature(original)} -> {signature(converted)}"
        )


def build(ctx: BuildContext) -> ArtifactResult:
    import onnx

    spec = ctx.target.fp16
    assert spec is not None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    converted = convert_fp16(ctx.model, spec)
    onnx.save(converted, str(ctx.out / FILE))
    timed(timings, "convert", start)
    blocked = set(spec.op_block_list)
    section = {
        "file": FILE,
        "keep_io_types": True,
        "op_block_list": list(spec.op_block_list),
        "ops_kept_fp32": sorted({n.op_type for n in converted.graph.node if n.op_type in blocked}),
        "casts": sum(1 for n in converted.graph.node if n.op_type == "Cast"),
    }
    model = ctx.check(FILE, SPEC.kind, SPEC.precision)
    return ArtifactResult(
        kind=SPEC.kind,
        models=(model,),
        section=section,
        timings=timings,
        readme=(f"- `{FILE}`: fp16 inside, fp32 inputs and outputs ({section['casts']} casts)",),
    )
