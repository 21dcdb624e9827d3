"""CLI: predict (no torch needed) and bench on a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onnx_pipeline.cli import app
from onnx_pipeline.config import BundleConfig
from onnx_pipeline.pipeline import run_bundle
from tests.helpers import assert_user_error as _assert_user_error

runner = CliRunner()


@pytest.fixture(scope="module")
def cpu_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory, photos: Path) -> Path:
    import shutil

    run = tmp_path_factory.mktemp("cli-runtime") / "run"
    shutil.copytree(tiny_run, run)
    run_bundle(run, ["cpu-x86_64"], BundleConfig(calibration_images=photos))
    return run / "bundles" / "cpu-x86_64"


def test_predict_json_has_the_flask_response_shape(cpu_bundle: Path, photos: Path) -> None:
    images = sorted(photos.iterdir())[:2]
    result = runner.invoke(app, ["predict", str(cpu_bundle), *map(str, images), "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["providers"][0] == "CPUExecutionProvider"
    first = payload["predictions"][0]
    assert {"class_id", "class_name", "probability", "top_k"} <= set(first)
    assert first["class_name"] == f"tiny-class-{first['class_id']}" and len(first["top_k"]) == 3
    assert first["top_k"][0]["class_id"] == first["class_id"]
    assert sum(c["probability"] for c in first["top_k"]) <= 1.0 + 1e-6


def test_predict_bad_inputs(cpu_bundle: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    _assert_user_error(runner.invoke(app, ["predict", str(cpu_bundle), str(text)]), "not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _assert_user_error(runner.invoke(app, ["predict", str(cpu_bundle), str(empty)]), "empty")
    _assert_user_error(runner.invoke(app, ["predict", str(tmp_path), str(text)]), "manifest")


def test_bench_json_reports_eager_baseline_and_floor(cpu_bundle: Path) -> None:
    result = runner.invoke(app, ["bench", str(cpu_bundle), "--batch-sizes", "1,2", "--seconds", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    backends = {row["backend"] for row in data["rows"]}
    assert {"onnxruntime", "torch-eager"} <= backends
    assert {row["batch_size"] for row in data["rows"]} == {1, 2}
    assert data["gemm"]["gflops"] > 0 and data["flops"]["flops_per_image"] > 0
