"""The torchserve target: model.mar opened and checked, its handler's preprocessing, config.properties, tampering."""

from __future__ import annotations

import importlib.util
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnx_pipeline import api
from onnx_pipeline.artifacts.torchserve import read_properties
from onnx_pipeline.errors import BundleError
from onnx_pipeline.files import sha256_file
from onnx_pipeline.manifest import BundleManifest
from onnx_pipeline.runtime.preprocess import load_image, preprocess_image
from tests.helpers import rewrite_manifest


def _handler_module(bundle: Path, tmp_path: Path) -> Any:
    """The handler.py inside model.mar, imported (it needs TorchServe's ``ts`` package, a dependency)."""
    with zipfile.ZipFile(bundle / "model.mar") as mar:
        (tmp_path / "archived_handler.py").write_bytes(mar.read("handler.py"))
    spec = importlib.util.spec_from_file_location("archived_handler", tmp_path / "archived_handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_archive_holds_the_bundles_model_handler_and_labels(torch_bundles: Path) -> None:
    bundle = torch_bundles / "bundles" / "torchserve"
    manifest = BundleManifest.read(bundle)
    with zipfile.ZipFile(bundle / "model.mar") as mar:
        names = set(mar.namelist())
        mar_manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        index = json.loads(mar.read("index_to_name.json"))
        settings = json.loads(mar.read("handler.json"))
        archived_model = mar.read("model.pt")
    assert {"model.pt", "handler.py", "index_to_name.json", "handler.json", "MAR-INF/MANIFEST.json"} <= names
    assert mar_manifest["model"]["modelName"] == "tiny-vgg" and mar_manifest["model"]["serializedFile"] == "model.pt"
    assert mar_manifest["model"]["handler"] == "handler.py"
    assert archived_model == (bundle / "model.pt").read_bytes()  # the TorchScript model judged by the bundle
    assert index == {str(i): name for i, name in enumerate(manifest.labels or ())}
    assert manifest.preprocessing is not None and settings["preprocessing"] == manifest.preprocessing.to_dict()
    assert settings["top_k"] == 5
    report = api.verify(bundle)
    assert report.status == "passed"
    assert report.steps["bundle"]["checks"]["torchserve"]["model_sha256"] == manifest.files["model.pt"]


def test_config_properties(torch_bundles: Path) -> None:
    properties = read_properties((torch_bundles / "bundles" / "torchserve" / "config.properties").read_text())
    assert properties["metrics_mode"] == "prometheus"
    assert properties["inference_address"] == "http://127.0.0.1:8080"
    assert properties["metrics_address"] == "http://127.0.0.1:8082"
    registered = json.loads(properties["models"])["tiny-vgg"]["1.0"]
    assert registered["marName"] == "model.mar" and registered["batchSize"] == 8 and registered["maxBatchDelay"] == 20
    assert properties["load_models"] == "model.mar"


def test_the_handler_preprocesses_as_the_runtime_does(torch_bundles: Path, photos: Path, tmp_path: Path) -> None:
    bundle = torch_bundles / "bundles" / "torchserve"
    handler = _handler_module(bundle, tmp_path)
    spec = BundleManifest.read(bundle).preprocessing
    assert spec is not None
    for photo in sorted(photos.iterdir()):
        ours = preprocess_image(load_image(photo, color=spec.color), spec)
        theirs = handler.preprocess_image(photo.read_bytes(), spec.to_dict())
        assert theirs.dtype == np.float32 and np.array_equal(ours, theirs), photo.name
    logits = np.array([[0.0, 2.0, 1.0]])
    probs = handler.probabilities(logits)
    assert np.allclose(probs.sum(), 1.0) and np.argmax(probs) == 1
    assert np.array_equal(handler.probabilities(np.array([[0.2, 0.8]])), [[0.2, 0.8]])  # already probabilities


def _replace_in_archive(bundle: Path, member: str, data: bytes) -> None:
    source = bundle / "model.mar"
    rebuilt = bundle / "rebuilt.mar"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(rebuilt, "w") as new:
        for item in old.infolist():
            new.writestr(item, data if item.filename == member else old.read(item.filename))
    rebuilt.replace(source)
    rewrite_manifest(bundle, lambda m: m["files"].update({"model.mar": sha256_file(source)}))


@pytest.mark.parametrize(
    ("member", "data", "message"),
    [
        ("index_to_name.json", b'{"0": "hotdog"}', "index_to_name.json differs"),
        ("handler.py", b"class A: pass\nclass B: pass\n", "exactly one"),
        ("model.pt", b"not a model", "not the bundle's"),
    ],
)
def test_a_changed_archive_fails_verify(
    torch_bundles: Path, tmp_path: Path, member: str, data: bytes, message: str
) -> None:
    bundle = tmp_path / "torchserve"
    shutil.copytree(torch_bundles / "bundles" / "torchserve", bundle)
    _replace_in_archive(bundle, member, data)  # the hash re-recorded: only the archive's own check can tell
    with pytest.raises(BundleError, match=message):
        api.verify(bundle)


def test_a_changed_config_fails_verify(torch_bundles: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "torchserve"
    shutil.copytree(torch_bundles / "bundles" / "torchserve", bundle)
    config = bundle / "config.properties"
    config.write_text(config.read_text().replace("127.0.0.1:8080", "0.0.0.0:8080"))
    rewrite_manifest(bundle, lambda m: m["files"].update({"config.properties": sha256_file(config)}))
    with pytest.raises(BundleError, match="inference_address is not a loopback address"):
        api.verify(bundle)


def test_torchserve_needs_image_preprocessing(tmp_path: Path) -> None:
    from tests.helpers import CONTROL_FLOW

    with pytest.raises(BundleError, match="no image preprocessing"):
        api.export(CONTROL_FLOW, weights="random", output=tmp_path / "run", targets=["torchserve"])
    assert not (tmp_path / "run").exists()
