"""The Open Inference Protocol (v2, KServe and Triton's REST API): infer requests in, responses out.

Plain functions on bytes and numpy arrays, no web framework, so they are tested on their own.
Both encodings of a tensor are read and written: JSON (``"data"``: a flat or nested list in
row-major order) and the binary tensor data extension, where the body is the JSON header
(``Inference-Header-Content-Length`` bytes long) followed by the raw little-endian bytes of each
input whose ``parameters`` give ``binary_data_size``, in the order of ``inputs``. An output is
sent as binary when its request entry asks ``"binary_data": true``, or, when the request lists
no outputs, when the request's ``parameters`` ask ``"binary_data_output": true`` (what
``tritonclient.http`` sends by default).

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_pipeline.errors import InputError

HEADER_LENGTH = "Inference-Header-Content-Length"

#: v2 datatypes this server reads and writes (BYTES and BF16 are not numeric numpy types)
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


class ProtocolError(InputError):
    """A v2 request this server cannot read: answered with HTTP 400 and ``{"error": ...}``."""


@dataclass(frozen=True)
class TensorMetadata:
    """A model input or output as v2 metadata describes it; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request asks for, and whether it wants it as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request: its input arrays by name and the outputs it asks for (``None``: all)."""

    id: str | None
    inputs: Mapping[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The v2 datatype of a numpy dtype."""
    for name, candidate in DATATYPES.items():
        if candidate == dtype.newbyteorder("<") or candidate == dtype:
            return name
    raise ProtocolError(f"numpy dtype {dtype} has no v2 datatype")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ProtocolError(f"input {name!r}: shape must be a list of integers")
    if any(d < 0 for d in value):
        raise ProtocolError(f"input {name!r}: shape {value} has a negative dimension")
    return tuple(value)


def _json_tensor(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"input {name!r}: data is not a list of {dtype.name} numbers") from None
    if array.size != math.prod(shape):
        raise ProtocolError(f"input {name!r}: {array.size} values given for shape {list(shape)}")
    return array.reshape(shape)


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, not {header_length!r}") from None
        if not 0 < length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        header, binary = body[:length], body[length:]
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, ValueError):
        hint = f" (binary tensors need the {HEADER_LENGTH} header)" if header_length is None else ""
        raise ProtocolError(f"the request is not valid JSON{hint}") from None
    return _object(request, "the request"), memoryview(binary)


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode an infer request body; ``header_length`` is the ``Inference-Header-Content-Length`` header."""
    request, binary = _split_body(body, header_length)
    entries = request.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError('the request needs "inputs": a non-empty list of tensors')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        entry = _object(entry, "each input")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError("each input needs a name")
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        datatype = entry.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input {name!r}: datatype {datatype!r} is not supported; use one of {list(DATATYPES)}")
        dtype = DATATYPES[datatype]
        shape = _shape(entry.get("shape"), name)
        size = _object(entry.get("parameters") or {}, f"input {name!r} parameters").get("binary_data_size")
        if size is None:
            if "data" not in entry:
                raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
            inputs[name] = _json_tensor(entry["data"], dtype, shape, name)
            continue
        expected = math.prod(shape) * dtype.itemsize
        if not isinstance(size, int) or size != expected:
            raise ProtocolError(f"input {name!r}: binary_data_size {size!r}, shape {list(shape)} needs {expected}")
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: the body ends before its {size} bytes of binary data")
        inputs[name] = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        offset += size
    if offset != len(binary):
        raise ProtocolError(f"the body has {len(binary) - offset} bytes after the last binary tensor")
    parameters = _object(request.get("parameters") or {}, "the request parameters")
    return InferRequest(
        id=str(request["id"]) if request.get("id") is not None else None,
        inputs=inputs,
        outputs=_requested_outputs(request.get("outputs")),
        binary_output=bool(parameters.get("binary_data_output", False)),
    )


def _requested_outputs(entries: Any) -> tuple[RequestedOutput, ...] | None:
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise ProtocolError('"outputs" must be a list')
    outputs = []
    for entry in entries:
        entry = _object(entry, "each requested output")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ProtocolError("each requested output needs a name")
        parameters = _object(entry.get("parameters") or {}, f"output {name!r} parameters")
        if parameters.get("classification"):
            raise ProtocolError(f"output {name!r}: the classification extension is not supported; read the tensor")
        if parameters.get("shared_memory_region"):
            raise ProtocolError(f"output {name!r}: shared memory is not supported over this server")
        outputs.append(RequestedOutput(name, bool(parameters.get("binary_data", False))))
    return tuple(outputs)


def check_input(request: InferRequest, spec: TensorMetadata) -> np.ndarray:
    """The request's one input, checked against the model's: name, datatype and every fixed dimension."""
    names = sorted(request.inputs)
    if names != [spec.name]:
        raise ProtocolError(f"the model takes one input {spec.name!r}, the request gives {names}")
    array = request.inputs[spec.name]
    datatype = datatype_of(array.dtype)
    if datatype != spec.datatype:
        raise ProtocolError(f"input {spec.name!r}: datatype {datatype}, the model takes {spec.datatype}")
    if len(array.shape) != len(spec.shape) or any(
        want >= 0 and got != want for got, want in zip(array.shape, spec.shape, strict=True)
    ):
        raise ProtocolError(f"input {spec.name!r}: shape {list(array.shape)}, the model takes {list(spec.shape)}")
    if array.shape and array.shape[0] == 0:
        raise ProtocolError(f"input {spec.name!r}: the batch is empty")
    return array


def selected_outputs(request: InferRequest, available: Sequence[str]) -> list[RequestedOutput]:
    """The outputs to send, each with its encoding; an unknown output name is an error."""
    if request.outputs is None:
        return [RequestedOutput(name, request.binary_output) for name in available]
    for output in request.outputs:
        if output.name not in available:
            raise ProtocolError(f"the model has no output {output.name!r}: it has {list(available)}")
    return list(request.outputs)


def encode_infer_response(
    model_name: str, request: InferRequest, outputs: Mapping[str, np.ndarray], wanted: Sequence[RequestedOutput]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: plain JSON, or the JSON header and binary tensors after it."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in wanted:
        array = np.ascontiguousarray(outputs[output.name])
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": list(array.shape)}
        if output.binary:
            blob = array.astype(DATATYPES[datatype], copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": entries}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(blobs), headers


def model_metadata(
    name: str, platform: str, inputs: Sequence[TensorMetadata], outputs: Sequence[TensorMetadata]
) -> dict[str, Any]:
    """The ``GET /v2/models/{name}`` answer."""

    def tensors(items: Sequence[TensorMetadata]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": name,
        "versions": ["1"],
        "platform": platform,
        "inputs": tensors(inputs),
        "outputs": tensors(outputs),
    }
