"""Export → check → simplify → verify into a run folder, on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from onnx_pipeline.errors import OutputExistsError, VerificationError
from onnx_pipeline.files import sha256_file
from onnx_pipeline.pipeline import VerifyRequest, run_export, run_verify
from tests.helpers import CONTROL_FLOW, tiny_config


def test_run_folder_has_model_manifest_and_report(tiny_run: Path) -> None:
    names = {p.name for p in tiny_run.iterdir()}
    assert {"model.onnx", "manifest.json", "report.json"} <= names
    assert not [n for n in names if n.startswith(".")], "no temporary files are left behind"
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "shape": ["batch", 3, 64, 64], "dtype": "float32"}]
    assert manifest["outputs"][0]["shape"] == ["batch", 10]
    assert manifest["dynamic_batch"] is True
    assert manifest["exporter"]["used"] == "dynamo"
    assert manifest["preprocessing"]["crop"] == [64, 64]
    assert manifest["labels"][:2] == ["tiny-class-0", "tiny-class-1"]
    assert manifest["source"]["weights"] == "random" and manifest["source"]["seed"] == 0
    assert {"torch", "onnx", "onnxruntime", "onnxsim"} <= set(manifest["versions"])
    assert {"export", "check", "simplify", "verify"} <= set(manifest["timings"])
    for rel, digest in manifest["files"].items():
        assert sha256_file(tiny_run / rel) == digest
    verification = manifest["verification"]
    assert verification["passed"] is True
    sizes = sorted(s["shape"][0] for s in verification["samples"])
    assert sizes[0] == 1 and sizes[-1] >= 2, "batch 1 and batch N are both verified"
    output = verification["outputs"][0]
    assert output["max_abs_error"] < 1e-4 and output["min_cosine"] > 0.9999 and output["top1_agreement"] == 1.0
    onnx.checker.check_model(str(tiny_run / "model.onnx"), full_check=True)


def test_existing_output_is_refused_without_force(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        run_export(tiny_config(out))
    assert (out / "keep.txt").read_text() == "mine"
    run_export(tiny_config(out, **{"": {"force": True}}))
    assert (out / "model.onnx").exists() and not (out / "keep.txt").exists()


def test_failed_verification_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Tolerances no float computation can meet: the run must fail and write nothing at DIR.
    config = tiny_config(out, tolerances={"atol": 0.0, "rtol": 0.0, "min_cosine": 1.0})
    with pytest.raises(VerificationError) as info:
        run_export(config)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    report = info.value.result.to_dict()
    assert report["status"] == "failed" and report["steps"]["verify"]["passed"] is False


def test_static_batch_and_torchscript_exporter(tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = run_export(tiny_config(out, export={"dynamic_batch": False, "exporter": "torchscript"}))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 3, 64, 64]
    assert manifest["exporter"]["used"] == "torchscript-trace"
    assert all(s["shape"][0] == 1 for s in report.steps["verify"]["samples"])


def test_external_data_uses_relative_paths(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_export(tiny_config(out, export={"external_data": True}))
    assert (out / "model.onnx.data").is_file()
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(out), moved)
    run_verify(VerifyRequest(path=moved))  # still loadable and verified after the move


def test_isolated_torch_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = run_export(tiny_config(out, **{"": {"isolate_torch": True}}))
    assert report.status == "passed"


def test_control_flow_is_exported_as_if_not_baked(tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = run_export(tiny_config(out, model={"model": CONTROL_FLOW, "weights": "random", "input_shape": (1, 10)}))
    export = report.steps["export"]
    assert export["fallbacks"][0]["exporter"] == "dynamo"
    assert export["used"] == "torchscript-script"
    assert any("data-dependent" in f for f in report.findings)
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "If" in ops
    assert report.steps["verify"]["passed"] is True


def test_torchscript_archive_as_model(tmp_path: Path) -> None:
    import torch

    from onnx_pipeline.sources import build_tiny_vgg

    torch.manual_seed(3)
    archive = tmp_path / "traced_tiny.pt"
    traced = torch.jit.trace(build_tiny_vgg().eval(), torch.randn(1, 3, 64, 64))
    torch.jit.save(traced, str(archive))
    out = tmp_path / "run"
    report = run_export(tiny_config(out, model={"model": str(archive), "weights": None, "input_shape": (1, 3, 64, 64)}))
    assert report.steps["export"]["used"].startswith("torchscript")
    assert report.steps["load"]["source"]["weights"] == "embedded"


def test_factory_metadata_travels_into_the_run_folder(tmp_path: Path) -> None:
    factory = tmp_path / "mine.py"
    factory.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(4, 3))\n"
        "build.input_shape = (1, 3, 32, 32)\n"
        "build.labels = ['cat', 'dog', 'bird']\n"
        "build.preprocessing = {'resize': 36, 'crop': 32}\n"
    )
    out = tmp_path / "run"
    run_export(tiny_config(out, model={"model": f"{factory}:build", "weights": "random"}))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["cat", "dog", "bird"]
    assert manifest["preprocessing"]["crop"] == [32, 32] and manifest["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert manifest["task"] == "classification" and manifest["source"]["kind"] == "factory"
