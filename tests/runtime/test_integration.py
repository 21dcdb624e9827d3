"""The runtime and bench on what the pipeline really writes: the exported run folder and a CPU bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from onnx_pipeline.errors import IntegrityError
from onnx_pipeline.runtime import Bundle


@pytest.fixture(scope="module")
def cpu_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cpu-x86_64 bundle built by the bundle step from a copy of the exported tiny run folder."""
    from onnx_pipeline.config import BundleConfig
    from onnx_pipeline.steps.bundle import build_bundle
    from onnx_pipeline.targets import load_target

    run = tmp_path_factory.mktemp("integration") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("bundles"))
    build_bundle(run, load_target("cpu-x86_64"), BundleConfig(synthetic_samples=4, max_heldout=2))
    return run / "bundles" / "cpu-x86_64"


def test_predict_on_the_exported_run_folder(tiny_run: Path, photos: Path) -> None:
    bundle = Bundle.load(tiny_run)
    images = sorted(photos.iterdir())
    predictions = bundle.predict_batch(images, top_k=3)
    assert len(predictions) == len(images)
    for prediction in predictions:
        assert isinstance(prediction.class_id, int) and len(prediction.top_k) == 3
        json.dumps(prediction.to_dict())


def test_every_model_of_a_cpu_bundle_predicts_alike(cpu_bundle: Path, photos: Path) -> None:
    image = sorted(photos.iterdir())[0]
    default = Bundle.load(cpu_bundle)
    assert default.model.file == json.loads((cpu_bundle / "manifest.json").read_text())["default_model"]
    assert default.providers == ("CPUExecutionProvider",)
    reference = Bundle.load(cpu_bundle, model="fp32", verify=False).predict(image)
    for entry in default.models:
        prediction = Bundle.load(cpu_bundle, model=entry.file, verify=False).predict(image)
        if entry.precision == "fp32":  # .onnx and .ort: the same arithmetic
            assert prediction.class_id == reference.class_id, entry.file
            assert prediction.probability == pytest.approx(reference.probability, abs=1e-5)
        else:  # int8 from synthetic calibration on random weights: near, not equal
            assert reference.class_id in [score.class_id for score in prediction.top_k], entry.file


def test_tampered_built_bundle_is_refused(cpu_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, copy)
    target = copy / "model.int8.onnx"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match=r"model\.int8\.onnx does not match"):
        Bundle.load(copy)


def test_bench_on_a_built_bundle(cpu_bundle: Path) -> None:
    from onnx_pipeline.bench import BenchConfig, benchmark_bundle

    config = BenchConfig(batch_sizes=(1,), warmup_runs=1, min_runs=2, min_seconds=0.0, gemm_size=128, gemv_mbytes=2)
    result = benchmark_bundle(cpu_bundle, config)
    labels = {row.model for row in result.rows}
    assert {"fp32", "fp32 (ort)", "int8"} <= labels
    assert result.flops is not None and result.flops.uncounted == ()
    assert all(row.floor_ms and row.roofline_ms for row in result.rows)
