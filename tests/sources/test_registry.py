"""VGG16-size runs (marked slow; the README's test command still runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnx_pipeline.config import ModelConfig
from onnx_pipeline.errors import VerificationError
from onnx_pipeline.pipeline import VerifyRequest, run_export, run_verify
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow


def test_vgg16_export_and_verify_random_weights(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "vgg16"
    config = tiny_config(
        out,
        model={"model": "vgg16", "weights": "random"},
        verify={"images": photos},
        **{"": {"isolate_torch": True}},
    )
    report = run_export(config)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == ["batch", 3, 224, 224]
    assert len(manifest["labels"]) == 1000 and manifest["labels"][0] == "tench"
    assert manifest["preprocessing"]["resize"] == 256 and manifest["preprocessing"]["crop"] == [224, 224]
    assert manifest["external_data"] is None  # 528 MB: one file
    output = report.steps["verify"]["outputs"][0]
    assert output["passed"] and output["top1_agreement"] == 1.0 and output["scale"] > 1e-3
    assert any(s["origin"] == "images" for s in report.steps["verify"]["samples"])


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_degenerate_random_model_is_refused_raw_and_verified_rescaled(tmp_path: Path, name: str) -> None:
    import torch

    from onnx_pipeline.config import ExportConfig
    from onnx_pipeline.sources import load_model
    from onnx_pipeline.steps.export import export_model

    raw = load_model(ModelConfig(model=name, weights="random", rescale_random=False))
    path = tmp_path / f"{name}.onnx"
    export_model(raw.module, torch.zeros(2, 3, 224, 224), path, ExportConfig())
    with pytest.raises(VerificationError, match=r"near zero|constant across inputs"):
        run_verify(VerifyRequest(path=path, model=ModelConfig(model=name, weights="random", rescale_random=False)))
    # The same architecture with rescaled random weights gives a meaningful comparison.
    out = tmp_path / "run"
    report = run_export(tiny_config(out, model={"model": name, "weights": "random"}))
    verify = report.steps["verify"]["outputs"][0]
    assert verify["passed"] and verify["scale"] > 0.1 and verify["degenerate"] is None
    assert any("rescaled" in f for f in report.findings)
    # And a broken copy of it is still caught: the rescaled comparison is not vacuous.
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(out / "model.onnx"))
    last = [i for i in model.graph.initializer if len(i.dims) == 2][-1]
    array = numpy_helper.to_array(last).copy()
    array[0] *= -1  # flip one class's weights
    last.CopyFrom(numpy_helper.from_array(array, last.name))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(VerificationError):
        run_verify(VerifyRequest(path=tmp_path / "broken.onnx", model=ModelConfig(model=name, weights="random")))
