"""The Python API mirrors the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_pipeline import api
from onnx_pipeline.errors import ModelSourceError, VerificationError


def test_api_export_and_verify(tmp_path: Path, tiny_run: Path) -> None:
    report = api.export("tiny-vgg", output=tmp_path / "run", weights="random", static_batch=True, simplify=False)
    assert report.status == "passed" and report.steps["simplify"]["applied"] is False
    assert api.verify(tmp_path / "run").status == "passed"
    assert api.verify(tiny_run / "model.onnx", model="tiny-vgg", weights="random").status == "passed"
    with pytest.raises(VerificationError):
        api.verify(tiny_run, atol=0.0, rtol=0.0, min_cosine=1.0)
    with pytest.raises(ModelSourceError):
        api.export("no_such_model", output=tmp_path / "x")


def test_fixed_tolerances_skip_the_float64_run(tiny_run: Path) -> None:
    fixed = api.verify(tiny_run, atol=1e-3, rtol=1e-3).steps["verify"]
    assert fixed["rule"] == "fixed" and "float64 run was skipped" in fixed["float64_unavailable"]
    assert all(o["noise"] is None for o in fixed["outputs"])
    default = api.verify(tiny_run).steps["verify"]
    assert default["rule"] == "noise-floor" and default["float64_unavailable"] is None
    assert all(o["noise"] is not None for o in default["outputs"])
