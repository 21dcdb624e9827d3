"""Open Inference Protocol v2 requests and responses, checked against tritonclient's own encoder and decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnx_pipeline.serve.protocol_v2 import (
    InferRequest,
    ProtocolError,
    RequestedOutput,
    TensorMetadata,
    check_input,
    encode_infer_response,
    parse_infer_request,
    selected_outputs,
)

SPEC = TensorMetadata("input", "FP32", (-1, 3, 4, 4))


def triton_body(array: np.ndarray, binary: bool, outputs: list[tuple[str, bool]] | None) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length that tritonclient.http sends for ``array``."""
    import tritonclient.http as httpclient
    from tritonclient.http import InferenceServerClient

    tensor = httpclient.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    requested = [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in outputs] if outputs else None
    body, length = InferenceServerClient.generate_request_body([tensor], outputs=requested, request_id="7")
    return body, None if length is None else str(length)


@pytest.mark.parametrize("binary", [True, False])
def test_reads_what_tritonclient_sends(binary: bool) -> None:
    array = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    body, length = triton_body(array, binary, [("output", binary)])
    request = parse_infer_request(body, length)
    assert request.id == "7" and request.outputs == (RequestedOutput("output", binary),)
    np.testing.assert_array_equal(check_input(request, SPEC), array)
    body, length = triton_body(array, binary, None)
    assert parse_infer_request(body, length).binary_output is True  # tritonclient's default with no outputs named


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_reads_what_we_send(binary: bool) -> None:
    from tritonclient.http import InferResult

    logits = np.random.default_rng(1).standard_normal((2, 10)).astype(np.float32)
    request = InferRequest("r", {}, None, binary)
    body, headers = encode_infer_response("m", request, {"output": logits}, selected_outputs(request, ["output"]))
    result = InferResult.from_response_body(body, header_length=headers.get("Inference-Header-Content-Length"))
    np.testing.assert_array_equal(result.as_numpy("output"), logits)
    assert result.get_response()["model_name"] == "m" and result.get_response()["id"] == "r"
    assert ("Inference-Header-Content-Length" in headers) is binary


def test_json_data_may_be_nested_or_flat() -> None:
    nested = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    for data in (nested.tolist(), nested.ravel().tolist()):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": data}]}
        np.testing.assert_array_equal(check_input(parse_infer_request(json.dumps(body).encode()), SPEC), nested)


def _request(**entry: object) -> bytes:
    base: dict[str, object] = {"name": "input", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": [0.0] * 48}
    return json.dumps({"inputs": [{**base, **entry}]}).encode()


@pytest.mark.parametrize(
    ("body", "length", "words"),
    [
        (b"[1, 2]", None, "JSON object"),
        (b"\x00\x01", None, "not valid JSON"),
        (_request(shape=[1, -3, 4, 4]), None, "negative"),
        (_request(shape="1x3"), None, "list of integers"),
        (_request(datatype="BF16"), None, "not supported"),
        (_request(data=[0.0] * 5), None, "5 values"),
        (_request(data=None, parameters={"binary_data_size": 192}), None, "ends before"),
        (_request(parameters={"binary_data_size": 10}), None, "needs 192"),
        (_request() + b"\x00" * 4, "4", "not valid JSON"),
        (_request(), "x", "must be an integer"),
        (_request(), "999999", "body has"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(body: bytes, length: str | None, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        parse_infer_request(body, length)


def test_trailing_binary_bytes_are_refused() -> None:
    header = _request(data=None, parameters={"binary_data_size": 192})
    with pytest.raises(ProtocolError, match="after the last binary tensor"):
        parse_infer_request(header + b"\x00" * 200, str(len(header)))


def test_inputs_are_checked_against_the_model() -> None:
    def request(array: np.ndarray, name: str = "input") -> InferRequest:
        return InferRequest(None, {name: array}, None, False)

    with pytest.raises(ProtocolError, match="datatype FP64"):
        check_input(request(np.zeros((1, 3, 4, 4))), SPEC)
    with pytest.raises(ProtocolError, match=r"shape \[1, 3, 4, 5\]"):
        check_input(request(np.zeros((1, 3, 4, 5), np.float32)), SPEC)
    with pytest.raises(ProtocolError, match="one input 'input'"):
        check_input(request(np.zeros((1, 3, 4, 4), np.float32), "x"), SPEC)
    assert check_input(request(np.zeros((5, 3, 4, 4), np.float32)), SPEC).shape[0] == 5  # any batch
    with pytest.raises(ProtocolError, match="no output 'probs'"):
        selected_outputs(InferRequest(None, {}, (RequestedOutput("probs", True),), False), ["output"])
    classification = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}],
                      "outputs": [{"name": "output", "parameters": {"classification": 3}}]}  # fmt: skip
    with pytest.raises(ProtocolError, match="classification extension"):
        parse_infer_request(json.dumps(classification).encode())
