"""The routes over real HTTP: the seed's client, TorchServe's calls, tritonclient in binary and JSON mode,
batching seen in /metrics, and every bad input answered with a JSON error."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from onnx_pipeline.runtime import Bundle
from tests.serve.server_process import ServerProcess

TIMEOUT = 30


@pytest.fixture(scope="module")
def reference(served_bundle: Path) -> Bundle:
    """The bundle loaded in this process: `predict`'s answers are what the server must give."""
    return Bundle.load(served_bundle)


def expected(reference: Bundle, image: Path, top_k: int = 5) -> dict[str, Any]:
    answer = reference.predict(image, top_k=top_k).to_dict()
    answer.pop("source")
    return answer


def images(photos: Path) -> list[Path]:
    return sorted(photos.iterdir())


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["class_id"] == want["class_id"] and got["class_name"] == want["class_name"]
    assert got["probability"] == pytest.approx(want["probability"], rel=1e-5, abs=1e-7)
    assert [c["class_id"] for c in got["top_k"]] == [c["class_id"] for c in want["top_k"]]
    for a, b in zip(got["top_k"], want["top_k"], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], rel=1e-5, abs=1e-7)


def assert_error(response: requests.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and words in body["error"], body
    assert "Traceback" not in response.text and 'File "' not in response.text


# ---------------------------------------------------------------------------- the seed's client
def test_seed_multipart_upload_gets_predicts_answer(server: ServerProcess, reference: Bundle, photos: Path) -> None:
    for image in images(photos):
        with open(image, "rb") as handle:
            response = requests.post(f"{server.url}/predict", files={"file": handle}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        body = response.json()
        assert {"class_id", "class_name", "probability", "top_k"} <= set(body)
        assert_same(body, expected(reference, image))


def test_raw_body_and_top_k(server: ServerProcess, reference: Bundle, photos: Path) -> None:
    image = images(photos)[1]
    response = requests.post(f"{server.url}/predict?top_k=2", data=image.read_bytes(), timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert_same(response.json(), expected(reference, image, top_k=2))


# ---------------------------------------------------------------------------- TorchServe's calls
def test_torchserve_api(server: ServerProcess, reference: Bundle, photos: Path) -> None:
    assert requests.get(f"{server.url}/ping", timeout=TIMEOUT).json() == {"status": "Healthy"}
    listed = requests.get(f"{server.url}/models", timeout=TIMEOUT).json()
    assert listed["models"] == [{"modelName": server.model, "modelUrl": "cpu-x86_64"}]
    image = images(photos)[2]
    want = {c["class_name"]: c["probability"] for c in expected(reference, image)["top_k"]}
    # `curl -T image.jpg .../predictions/MODEL` (the seed's call) is a PUT of the raw file
    put = requests.put(f"{server.url}/predictions/{server.model}", data=image.read_bytes(), timeout=TIMEOUT)
    with open(image, "rb") as handle:
        post = requests.post(f"{server.url}/predictions/{server.model}", files={"data": handle}, timeout=TIMEOUT)
    for response in (put, post):
        assert response.status_code == 200, response.text
        assert list(response.json()) == list(want)
        assert response.json() == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------- tritonclient (v2)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_gets_predicts_numbers(
    server: ServerProcess, reference: Bundle, photos: Path, binary: bool
) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=TIMEOUT)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(server.model)
        metadata = client.get_model_metadata(server.model)
        assert metadata["inputs"][0]["shape"] == [-1, *reference.input_shape[1:]]
        assert metadata["inputs"][0]["datatype"] == "FP32"
        paths = images(photos)[:3]
        batch = np.stack([reference.preprocess(p) for p in paths])
        tensor = httpclient.InferInput(metadata["inputs"][0]["name"], list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        output_name = metadata["outputs"][0]["name"]
        asked = [httpclient.InferRequestedOutput(output_name, binary_data=binary)]
        for outputs in (asked, None):  # named outputs, and none named (binary_data_output)
            result = client.infer(server.model, [tensor], outputs=outputs, request_id="r1")
            logits = result.as_numpy(output_name)
            assert logits.shape == (3, 10) and logits.dtype == np.float32
            probabilities = reference.probabilities(logits)
            for path, row in zip(paths, probabilities, strict=True):
                want = expected(reference, path)
                assert int(np.argmax(row)) == want["class_id"]
                assert float(row.max()) == pytest.approx(want["probability"], rel=1e-5)
            np.testing.assert_allclose(logits, reference.run(batch), rtol=1e-5, atol=1e-6)
    finally:
        client.close()


def test_v2_json_request_by_hand(server: ServerProcess, reference: Bundle, photos: Path) -> None:
    sample = reference.preprocess(images(photos)[0])[None]
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(sample.shape), "data": sample.tolist()}]}
    response = requests.post(f"{server.url}/v2/models/{server.model}/versions/1/infer", json=request, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == server.model and body["outputs"][0]["shape"] == [1, 10]
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]), reference.run(sample)[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- batching and metrics
def _metric(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    server: ServerProcess, reference: Bundle, photos: Path
) -> None:
    before = requests.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    paths = images(photos) * 2
    answers: dict[int, requests.Response] = {}
    barrier = threading.Barrier(len(paths))

    def call(index: int, path: Path) -> None:
        data = path.read_bytes()
        barrier.wait(timeout=TIMEOUT)
        answers[index] = requests.post(f"{server.url}/predict", files={"file": (path.name, data)}, timeout=TIMEOUT)

    threads = [threading.Thread(target=call, args=(i, p)) for i, p in enumerate(paths)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(answers) == len(paths)
    for index, path in enumerate(paths):
        assert answers[index].status_code == 200, answers[index].text
        assert_same(answers[index].json(), expected(reference, path))
    after = requests.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    labels = f'model="{server.model}"'
    batches = _metric(after, "onnx_pipeline_batch_size_count", labels) - _metric(
        before, "onnx_pipeline_batch_size_count", labels
    )
    rows = _metric(after, "onnx_pipeline_batch_size_sum", labels) - _metric(
        before, "onnx_pipeline_batch_size_sum", labels
    )
    assert rows == len(paths)
    assert batches < len(paths), f"{len(paths)} concurrent requests ran in {batches} batches: none was batched"
    single = _metric(after, "onnx_pipeline_batch_size_bucket", labels + ',le="1.0"') - _metric(
        before, "onnx_pipeline_batch_size_bucket", labels + ',le="1.0"'
    )
    assert single < batches, "every batch had one row"
    assert _metric(after, "onnx_pipeline_requests_total", 'endpoint="/predict",status="200"') >= len(paths)
    for name in (
        "onnx_pipeline_request_seconds_bucket",
        "onnx_pipeline_inference_seconds_sum",
        "onnx_pipeline_queue_depth",
    ):
        assert name in after
    assert re.search(r'^onnx_pipeline_model_info\{.*file="model\.int8\.onnx".*\} 1\.0$', after, re.MULTILINE)


# ---------------------------------------------------------------------------- bad input
def _bomb() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")  # 81 MP: over the runtime's 64 MP limit, a few KB
    return buffer.getvalue()


def test_bad_images_are_400(server: ServerProcess, photos: Path) -> None:
    url = f"{server.url}/predict"
    jpeg = next(p for p in images(photos) if p.suffix == ".jpg").read_bytes()
    assert_error(requests.post(url, files={"file": ("a.jpg", b"not an image")}, timeout=TIMEOUT), 400, "not an image")
    assert_error(requests.post(url, data=jpeg[: len(jpeg) // 3], timeout=TIMEOUT), 400, "truncated")
    assert_error(requests.post(url, data=_bomb(), timeout=TIMEOUT), 400, "decompression bomb")
    assert_error(requests.post(url, data=b"", timeout=TIMEOUT), 400, "no image")
    assert_error(requests.post(url, files={"image": ("a.jpg", jpeg)}, timeout=TIMEOUT), 400, 'field "file"')
    assert_error(requests.post(f"{url}?top_k=0", data=jpeg, timeout=TIMEOUT), 400, "top_k")


def test_unknown_model_and_path_are_404(server: ServerProcess, photos: Path) -> None:
    data = images(photos)[0].read_bytes()
    assert_error(requests.post(f"{server.url}/predict?model=nope", data=data, timeout=TIMEOUT), 404, "no model 'nope'")
    assert_error(requests.put(f"{server.url}/predictions/nope", data=data, timeout=TIMEOUT), 404, "no model")
    assert_error(requests.get(f"{server.url}/v2/models/nope", timeout=TIMEOUT), 404, "no model")
    assert_error(requests.post(f"{server.url}/v2/models/nope/infer", json={}, timeout=TIMEOUT), 404, "no model")
    assert_error(requests.get(f"{server.url}/v2/models/{server.model}/versions/2", timeout=TIMEOUT), 404, "version")
    assert_error(requests.get(f"{server.url}/nothing-here", timeout=TIMEOUT), 404, "Not Found")
    assert_error(requests.get(f"{server.url}/predict", timeout=TIMEOUT), 405, "Method Not Allowed")


def test_body_over_the_limit_is_413(server: ServerProcess) -> None:
    big = b"\xff" * (5 << 20)  # 5 MiB; the server's limit is 4 MiB
    assert_error(requests.post(f"{server.url}/predict", data=big, timeout=TIMEOUT), 413, "limit")

    def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for _ in range(5):
            yield b"\xff" * (1 << 20)

    assert_error(requests.post(f"{server.url}/predict", data=chunks(), timeout=TIMEOUT), 413, "limit")
    assert requests.get(f"{server.url}/ping", timeout=TIMEOUT).status_code == 200


def test_bad_tensors_are_400(server: ServerProcess, reference: Bundle) -> None:
    url = f"{server.url}/v2/models/{server.model}/infer"
    c, h, w = (int(d) for d in reference.input_shape[1:])  # type: ignore[arg-type]

    def tensor(shape: list[int], datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
        entry = {"name": "input", "datatype": datatype, "shape": shape, "data": [0.5] * int(np.prod(shape))}
        return {"inputs": [{**entry, **extra}]}

    cases = [
        (tensor([1, c, h // 2, w]), f"shape [1, {c}, {h // 2}, {w}]"),
        (tensor([1, c, h, w], "FP64"), "datatype FP64"),
        (tensor([1, c, h, w], "BYTES"), "not supported"),
        (tensor([1, c, h, w], data=[0.5] * 7), "7 values"),
        (tensor([1, c, h, w], name="pixels"), "one input 'input'"),
        (tensor([0, c, h, w]), "empty"),
        ({"inputs": []}, "non-empty list"),
        (tensor([1, c, h, w], data=["a"] * (c * h * w)), "not a list of float32"),
    ]
    for body, words in cases:
        assert_error(requests.post(url, json=body, timeout=TIMEOUT), 400, words)
    assert_error(requests.post(url, data=b"{not json", timeout=TIMEOUT), 400, "not valid JSON")
    size = c * h * w * 4
    entry = {"name": "input", "datatype": "FP32", "shape": [1, c, h, w], "parameters": {"binary_data_size": size}}
    header = json.dumps({"inputs": [entry]}).encode()
    short = header + b"\0" * 100
    response = requests.post(
        url, data=short, headers={"Inference-Header-Content-Length": str(len(header))}, timeout=TIMEOUT
    )
    assert_error(response, 400, "ends before")
    lying = requests.post(url, data=header, headers={"Inference-Header-Content-Length": "9999"}, timeout=TIMEOUT)
    assert_error(lying, 400, "Inference-Header-Content-Length")
