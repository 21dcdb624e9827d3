"""The torchscript bundle's C++ program built with CMake and run, and a real TorchServe serving model.mar.

Both answers are compared with ``predict`` (onnxruntime on the run's ONNX model) on real photographs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnx_pipeline import api
from tests.helpers import TINY_CLASSES
from tests.torch_deploy import build_classify, torchserve_running

pytestmark = pytest.mark.slow
#: probabilities from LibTorch/TorchServe against onnxruntime's (float32 kernels of two libraries)
PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def classify_program(torch_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C++ program built once per session from the bundle's cpp/ (the bundle itself is not written to)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    return build_classify(torch_bundles / "bundles" / "torchscript", tmp_path_factory.mktemp("classify-build"))


def _expected(run: Path, photos: list[Path]) -> list[Any]:
    return api.predict(run, photos, top_k=TINY_CLASSES)


def _check_top_k(top_k: list[dict[str, Any]], expected: Any, labels: tuple[str, ...]) -> None:
    probs = {c.class_id: c.probability for c in expected.top_k}
    for entry in top_k:
        assert entry["class_name"] == labels[entry["class_id"]]
        assert abs(entry["probability"] - probs[entry["class_id"]]) <= PROBABILITY_TOLERANCE, (entry, probs)
    ranked = sorted(probs.values(), reverse=True)
    if ranked[0] - ranked[1] > 2 * PROBABILITY_TOLERANCE:  # a clear winner must be the same class
        assert top_k[0]["class_id"] == expected.class_id


def test_cpp_program_matches_predict(classify_program: Path, torch_bundles: Path, photos: Path, tmp_path: Path) -> None:
    from onnx_pipeline.manifest import BundleManifest

    bundle = torch_bundles / "bundles" / "torchscript"
    labels = BundleManifest.read(bundle).labels
    assert labels is not None
    images = sorted(photos.iterdir())[:6]
    for photo, expected in zip(images, _expected(torch_bundles, images), strict=True):
        tensor = api.preprocess(photo, bundle, tmp_path / f"{photo.stem}.bin")
        command = [str(classify_program), str(bundle / "model.pt"), str(tensor)]
        done = subprocess.run(
            [*command, "--labels", str(bundle / "labels.txt"), "--top-k", "5"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        (answer,) = json.loads(done.stdout)["predictions"]
        assert len(answer["top_k"]) == 5
        _check_top_k(answer["top_k"], expected, labels)


def test_cpp_program_refuses_a_bad_input(classify_program: Path, torch_bundles: Path, tmp_path: Path) -> None:
    bundle = torch_bundles / "bundles" / "torchscript"
    (tmp_path / "bad.bin").write_bytes(b"OPTENSOR" + b"\0" * 8)
    done = subprocess.run(
        [str(classify_program), str(bundle / "model.pt"), str(tmp_path / "bad.bin")], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "truncated" in done.stderr
    assert done.stdout == ""


def _request(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    # an image body: not form data (urllib's default type for a POST body)
    headers = {"Content-Type": "application/octet-stream"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.status, answer.read()


def test_torchserve_serves_the_archive(torch_bundles: Path, photos: Path, tmp_path: Path) -> None:
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java (11 or later), and none is installed: apt-get install default-jre-headless")
    bundle = torch_bundles / "bundles" / "torchserve"
    images = sorted(photos.iterdir())[:3]
    expected = _expected(torch_bundles, images)
    labels = tuple(c.class_name or "" for c in sorted(expected[0].top_k, key=lambda c: c.class_id))
    with torchserve_running(bundle, tmp_path / "serve") as urls:
        status, body = _request(f"{urls['inference']}/ping")
        assert status == 200 and json.loads(body)["status"] == "Healthy"
        for photo, want in zip(images, expected, strict=True):
            status, body = _request(f"{urls['inference']}/predictions/tiny-vgg", photo.read_bytes())
            answer = json.loads(body)
            assert status == 200 and set(answer) == {"class_id", "class_name", "probability", "top_k"}
            assert answer["class_name"] == labels[answer["class_id"]]
            assert np.isclose(answer["probability"], answer["top_k"][0]["probability"])
            _check_top_k(answer["top_k"], want, labels)
        status, body = _request(f"{urls['metrics']}/metrics")
        metrics = body.decode()
        assert status == 200 and "# TYPE" in metrics and "ts_inference_requests_total" in metrics
