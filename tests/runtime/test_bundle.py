"""The edge runtime: loading bundles and run folders, hash checks, providers, predictions."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_pipeline.errors import BundleError, InputError, IntegrityError
from onnx_pipeline.runtime import Bundle, Prediction, PreprocessSpec, SessionSettings, preprocess_image
from tests.helpers import (
    LABELS,
    REPO,
    TINY_CLASSES,
    make_run_folder,
    rewrite_manifest,
    tiny_module,
    tiny_spec,
    write_bundle_manifest,
)

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photo_paths")
    paths = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage_data, name)()).save(path, "JPEG", quality=92)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return Bundle.load(tiny_bundle)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    """A private copy of a shared bundle that a test may tamper with."""
    import shutil

    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


# ---------------------------------------------------------------------------- predictions
def test_predict_shape_and_json(bundle: Bundle, photo_paths: list[Path]) -> None:
    prediction = bundle.predict(photo_paths[0], top_k=3)
    assert isinstance(prediction, Prediction)
    assert isinstance(prediction.class_id, int)
    assert prediction.class_name == LABELS[prediction.class_id]
    assert len(prediction.top_k) == 3
    assert prediction.top_k[0].class_id == prediction.class_id
    probs = [entry.probability for entry in prediction.top_k]
    assert probs == sorted(probs, reverse=True)
    assert 0.0 < prediction.probability <= 1.0
    data = json.loads(json.dumps(prediction.to_dict()))
    assert {"class_id", "class_name", "probability", "top_k", "source"} <= set(data)
    assert data["top_k"][0] == {"class_id": prediction.class_id, "class_name": prediction.class_name,
                                "probability": prediction.probability}  # fmt: skip
    assert bundle.providers == ("CPUExecutionProvider",)


def test_predictions_match_pytorch(bundle: Bundle, photo_paths: list[Path]) -> None:
    torch = pytest.importorskip("torch")
    model = tiny_module()
    predictions = bundle.predict_batch(photo_paths, top_k=TINY_CLASSES)
    for path, prediction in zip(photo_paths, predictions, strict=True):
        sample = preprocess_image(Image.open(path).convert("RGB"), tiny_spec(64))
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(sample[None])), dim=1)[0].numpy()
        got = np.zeros(TINY_CLASSES)
        for entry in prediction.top_k:
            got[entry.class_id] = entry.probability
        assert prediction.class_id == int(expected.argmax())
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert got.sum() == pytest.approx(1.0)


def test_inputs_path_bytes_pil_agree(bundle: Bundle, photo_paths: list[Path]) -> None:
    path = photo_paths[1]
    by_path = bundle.predict(path)
    by_str = bundle.predict(str(path))
    by_bytes = bundle.predict(path.read_bytes())
    by_pil = bundle.predict(Image.open(path))
    assert by_path.top_k == by_str.top_k == by_bytes.top_k
    assert [e.class_id for e in by_pil.top_k] == [e.class_id for e in by_path.top_k]
    assert by_bytes.source == "<bytes>" and by_path.source == str(path)


def test_batch_equals_single_and_chunks(bundle: Bundle, photo_paths: list[Path]) -> None:
    singles = [bundle.predict(p) for p in photo_paths]
    for size in (None, 2):
        batch = bundle.predict_batch(photo_paths, batch_size=size)
        for one, many in zip(singles, batch, strict=True):
            assert one.class_id == many.class_id
            assert one.probability == pytest.approx(many.probability, abs=1e-6)
    assert bundle.predict_batch([]) == []
    with pytest.raises(InputError, match="top_k"):
        bundle.predict(photo_paths[0], top_k=0)


def test_non_image_is_an_input_error(bundle: Bundle, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(InputError, match="not an image"):
        bundle.predict(text)
    with pytest.raises(InputError, match="empty"):
        bundle.predict(b"")


def test_run_folder_loads(tmp_path: Path, photo_paths: list[Path], bundle: Bundle) -> None:
    run = Bundle.load(make_run_folder(tmp_path / "run", size=64))
    assert run.model.file == "model.onnx"
    assert run.predict(photo_paths[2]).top_k == bundle.predict(photo_paths[2]).top_k
    assert Bundle.load(run.root / "manifest.json").model.file == "model.onnx"


def test_choose_int8_and_unknown_model(photo_paths: list[Path], tiny_bundle_int8: Path) -> None:
    folder = tiny_bundle_int8
    assert Bundle.load(folder).model.precision == "fp32"
    int8 = Bundle.load(folder, model="int8")
    assert int8.model.file == "model.int8.onnx"
    assert Bundle.load(folder, model="model.int8.onnx").model.precision == "int8"
    assert int8.predict(photo_paths[0]).class_name in LABELS
    with pytest.raises(InputError, match="no model 'fp16'"):
        Bundle.load(folder, model="fp16")


# ---------------------------------------------------------------------------- integrity
def test_tampered_model_is_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = _copy(tiny_bundle, tmp_path)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.onnx does not match its sha256"):
        Bundle.load(folder)


def test_truncated_model_is_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = _copy(tiny_bundle, tmp_path)
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match=r"model\.onnx does not match its sha256 \(altered or truncated"):
        Bundle.load(folder)


def test_tampered_readme_and_missing_file_are_refused(tmp_path: Path, tiny_bundle_int8: Path) -> None:
    folder = _copy(tiny_bundle_int8, tmp_path)
    (folder / "README.md").write_text("changed\n")
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(IntegrityError) as info:
        Bundle.load(folder)
    assert "README.md does not match" in str(info.value) and "model.int8.onnx is missing" in str(info.value)
    Bundle.load(folder, verify=False)  # the caller may skip the check on purpose


def test_unlisted_model_and_escaping_paths_are_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = _copy(tiny_bundle, tmp_path)
    original = (folder / "manifest.json").read_text()
    manifest = json.loads(original)
    del manifest["files"]["model.onnx"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="edited after it was written"):  # a careless edit
        Bundle.load(folder)
    (folder / "manifest.json").write_text(original)
    rewrite_manifest(folder, lambda d: d["files"].pop("model.onnx"))  # the same, re-signed
    with pytest.raises(IntegrityError, match="does not list it in 'files'"):
        Bundle.load(folder)
    rewrite_manifest(folder, lambda d: d["files"].update({"model.onnx": "0" * 64, "../outside.txt": "0" * 64}))
    with pytest.raises(IntegrityError, match="outside the folder"):
        Bundle.load(folder)


def test_missing_or_broken_manifest(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"has no manifest\.json: give a run folder or a bundle"):
        Bundle.load(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        Bundle.load(tmp_path / "nowhere")
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file: give the folder"):
        Bundle.load(model)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Bundle.load(tmp_path)


def test_preprocessing_that_does_not_fit_the_model_is_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = _copy(tiny_bundle, tmp_path)
    (folder / "manifest.json").unlink()
    write_bundle_manifest(
        folder,
        [{"file": "model.onnx", "precision": "fp32"}],
        preprocessing=PreprocessSpec(resize=256, crop=(224, 224)).to_dict(),
    )
    with pytest.raises(BundleError, match=r"height 224 but model\.onnx expects 64"):
        Bundle.load(folder)


# ---------------------------------------------------------------------------- providers, settings
def test_unavailable_providers_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tiny_bundle: Path
) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is available here")
    folder = _copy(tiny_bundle, tmp_path)
    (folder / "manifest.json").unlink()
    write_bundle_manifest(
        folder,
        [{"file": "model.onnx", "precision": "fp32"}],
        execution_providers=[["TensorrtExecutionProvider", {"trt_fp16_enable": True}], "CPUExecutionProvider"],
    )
    with caplog.at_level(logging.WARNING, logger="onnx_pipeline.runtime"):
        loaded = Bundle.load(folder)
    assert loaded.providers == ("CPUExecutionProvider",)
    assert "TensorrtExecutionProvider is not available" in caplog.text
    with caplog.at_level(logging.WARNING, logger="onnx_pipeline.runtime"):
        only_trt = Bundle.load(folder, providers=["TensorrtExecutionProvider"])
    assert only_trt.providers == ("CPUExecutionProvider",)
    assert "none of the requested execution providers" in caplog.text
    assert only_trt.describe()["providers_requested"] == ["TensorrtExecutionProvider"]


def test_session_settings(tiny_bundle: Path) -> None:
    settings = SessionSettings.from_dict({"graph_optimization_level": "ORT_ENABLE_EXTENDED", "intra_op_num_threads": 2})
    assert settings.graph_optimization_level == "extended"
    options = settings.build()
    assert options.intra_op_num_threads == 2
    with pytest.raises(InputError, match="graph_optimization_level"):
        SessionSettings(graph_optimization_level="fastest")
    assert Bundle.load(tiny_bundle, settings=settings).settings == settings


# ---------------------------------------------------------------------------- outputs and batches
def _matmul_model(path: Path, *, batch: int | str, softmax: bool) -> None:
    """A hand-made classifier (Flatten → MatMul → [Softmax]) on 3×64×64 inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((3 * 64 * 64, TINY_CLASSES)).astype(np.float32) * 0.01
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    last = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        last = "probs"
    nodes.append(helper.make_node("Identity", [last], ["output"]))
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, TINY_CLASSES])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_probabilities_are_not_softmaxed_twice(tmp_path: Path, photo_paths: list[Path]) -> None:
    pytest.importorskip("onnx")
    results = {}
    for softmax in (False, True):
        folder = tmp_path / f"softmax-{softmax}"
        folder.mkdir()
        _matmul_model(folder / "model.onnx", batch="batch", softmax=softmax)
        write_bundle_manifest(folder, [{"file": "model.onnx", "precision": "fp32"}])
        results[softmax] = Bundle.load(folder).predict(photo_paths[0], top_k=TINY_CLASSES)
    logits_probs = [e.probability for e in results[False].top_k]
    softmax_probs = [e.probability for e in results[True].top_k]
    np.testing.assert_allclose(logits_probs, softmax_probs, atol=1e-5)


def test_static_batch_model_is_padded(tmp_path: Path, photo_paths: list[Path]) -> None:
    pytest.importorskip("onnx")
    folder = tmp_path / "static"
    folder.mkdir()
    _matmul_model(folder / "model.onnx", batch=2, softmax=False)
    write_bundle_manifest(folder, [{"file": "model.onnx", "precision": "fp32"}], labels=None)
    loaded = Bundle.load(folder)
    assert loaded.static_batch == 2
    predictions = loaded.predict_batch(photo_paths[:3])
    assert len(predictions) == 3 and predictions[0].class_name is None
    assert predictions[2].top_k == loaded.predict(photo_paths[2]).top_k


# ---------------------------------------------------------------------------- no torch on the device
def test_load_and_predict_never_import_torch(tmp_path: Path, tiny_bundle: Path) -> None:
    image = tmp_path / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(image)
    code = (
        "import sys\n"
        "from onnx_pipeline.runtime import Bundle\n"
        f"bundle = Bundle.load({str(tiny_bundle)!r})\n"
        f"prediction = bundle.predict({str(image)!r})\n"
        f"bundle.predict(open({str(image)!r}, 'rb').read())\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxscript') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print(prediction.class_name)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in LABELS


def test_runtime_sources_do_not_import_torch() -> None:
    for path in (REPO / "onnx_pipeline" / "runtime").glob("*.py"):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        imports = [line for line in lines if line.startswith(("import ", "from "))]
        assert not [line for line in imports if "torch" in line or line.startswith(("import onnx ", "from onnx "))]


def test_prediction_to_dict_is_plain(bundle: Bundle) -> None:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.rocket()).save(buffer, "PNG")
    data = bundle.predict(buffer.getvalue(), top_k=2).to_dict()
    assert type(data["class_id"]) is int and type(data["probability"]) is float
    assert len(data["top_k"]) == 2
