"""Check an ONNX file: onnx.checker with full check (shape inference included), and describe it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_pipeline.errors import CheckError, InputError


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, shape (a dynamic dim is its name) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "initializers": self.initializers,
            "size_bytes": self.size_bytes,
            "opset": self.opset,
            "ir_version": self.ir_version,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "op_types": self.op_types,
        }


@dataclass(frozen=True)
class CheckResult:
    """The checker passed (a failure raises ``CheckError``); what it looked at."""

    path: Path
    info: ModelInfo
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path.name, "passed": True, "seconds": round(self.seconds, 3), **self.info.to_dict()}


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


def check_model(path: Path) -> CheckResult:
    """Run onnx.checker (full check, shape inference) on a file; raise ``CheckError`` on failure."""
    import onnx

    start = time.perf_counter()
    path = Path(path)
    model = load_onnx(path, load_external_data=False)
    try:
        # A path (not a proto) lets the checker follow external data and models over 2 GB.
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckError(f"the ONNX checker rejected {path.name}: {first}") from None
    return CheckResult(path=path, info=describe_model(path, model), seconds=time.perf_counter() - start)
