"""The issue's case on VGG16: one output channel of features.19 ×1.01, caught, localised, in bounded memory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from tests.helpers import TESTS, run_with_peak_rss

pytestmark = pytest.mark.slow

#: the issue's bound on localisation's peak resident memory for VGG16
PEAK_RSS_LIMIT = 4e9


def _cli(*args: str) -> tuple[int, dict, float]:
    """(exit code, JSON report, peak RSS in bytes of the process and its workers)."""
    root = str(TESTS.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code, stdout, _, peak = run_with_peak_rss([sys.executable, "-m", "onnx_pipeline", *args, "--json"], env)
    return code, json.loads(stdout), peak


def test_vgg16_scaled_channel_is_caught_and_localised_under_4_gb(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, _, _ = _cli("export", "-m", "vgg16", "-w", "random", "-o", str(run), "--no-verify", "--no-simplify")
    assert code == 0
    model = onnx.load(str(run / "model.onnx"))
    weight = next(i for i in model.graph.initializer if i.name == "features.19.weight")
    array = numpy_helper.to_array(weight).copy()
    array[0] *= 1.01
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    del model, weight, array
    code, report, peak = _cli("verify", str(tmp_path / "bad.onnx"), "-m", "vgg16", "-w", "random")
    verify = report["steps"]["verify"]
    assert code == 1 and verify["outputs"][0]["rule"] == "noise-floor", report.get("error")
    first = verify["localization"]["first_divergence"]
    assert first["module"] == "features.19" and first["op_type"] == "Conv", verify["localization"]["summary"]
    assert verify["localization"]["last_within"]["module"] == "features.18"
    assert "first divergence at" in verify["verdict"] and "features.19" in verify["verdict"]
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e9:.2f} GB"
