"""fp32 → fp16 conversion that keeps fp32 inputs and outputs and still loads in onnxruntime.

Uses ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``. The
target's ``op_block_list`` is added to the converter's own default block list (passing a list
replaces that default, which would convert ops such as TopK or Range that have no fp16 kernel).
"""

from __future__ import annotations

import logging
from typing import Any

from onnx_pipeline.errors import BundleError
from onnx_pipeline.targets import Fp16Spec

log = logging.getLogger(__name__)


def convert_fp16(model: Any, spec: Fp16Spec) -> Any:
    """An fp16 copy of ``model`` with fp32 graph inputs/outputs; raises BundleError if it does not load.

    ``model`` must carry shape information (``quantize_int8.infer_shapes``); it is not modified.
    """
    import onnx
    import onnxruntime as ort
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
            f"fp16 conversion failed ({type(exc).__name__}: {exc}): add the op to [fp16] op_block_list"
        ) from None
    check_io_float32(model, converted)
    try:
        ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise BundleError(
            f"the fp16 model does not load in onnxruntime ({str(exc).splitlines()[0]}): add the failing op "
            "to [fp16] op_block_list in the target profile"
        ) from None
    return converted


def check_io_float32(original: Any, converted: Any) -> None:
    """Raise BundleError unless the converted model's inputs and outputs keep the original names and dtypes."""

    def signature(model: Any) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]

    if signature(original) != signature(converted):
        raise BundleError(
            f"fp16 conversion changed the model's inputs/outputs: {signature(original)} -> {signature(converted)}"
        )
