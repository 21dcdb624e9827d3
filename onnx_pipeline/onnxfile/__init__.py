"""ONNX file plumbing shared by the steps and builders: reading, the one streaming writer, ``ModelParts``.

- ``model``: ``load_onnx`` (one-line errors), ``describe_model``, topological ordering.
- ``parts``: a model as its skeleton and its weights (``ModelParts``, ``load_parts`` mapping external
  data), and the one weightless copy (``weightless_copy``, ``infer_shapes``).
- ``write``: ``write_model``, the one streaming writer (one file, or external data when asked or
  needed), and ``PROTOBUF_LIMIT``.
"""

from onnx_pipeline.onnxfile.model import (
    ModelInfo,
    TensorInfo,
    describe_model,
    external_data_files,
    load_onnx,
    topological_order,
    topological_sort,
)
from onnx_pipeline.onnxfile.parts import (
    LARGE_ELEMENTS,
    ModelParts,
    infer_shapes,
    large_initializers,
    load_parts,
    model_skeleton,
    restore_initializers,
    split_model,
    strip,
    weightless_copy,
)
from onnx_pipeline.onnxfile.write import (
    PROTOBUF_LIMIT,
    WrittenModel,
    inline_external_data,
    varint,
    write_model,
)

__all__ = [
    "LARGE_ELEMENTS",
    "PROTOBUF_LIMIT",
    "ModelInfo",
    "ModelParts",
    "TensorInfo",
    "WrittenModel",
    "describe_model",
    "external_data_files",
    "infer_shapes",
    "inline_external_data",
    "large_initializers",
    "load_onnx",
    "load_parts",
    "model_skeleton",
    "restore_initializers",
    "split_model",
    "strip",
    "topological_order",
    "topological_sort",
    "varint",
    "weightless_copy",
    "write_model",
]
