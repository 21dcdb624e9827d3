"""Sensitivity and automatic fallback: a tiny model with one layer reading extreme outliers, made to miss int8."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from onnx_pipeline.config import BundleConfig
from onnx_pipeline.errors import BundleError
from onnx_pipeline.steps.bundle import build_bundle
from onnx_pipeline.steps.verify_bundle import verify_bundle
from onnx_pipeline.targets import load_target
from tests.helpers import make_run_folder, outlier_module, tight_profile


@pytest.fixture(scope="module")
def outlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_folder(tmp_path_factory.mktemp("outliers") / "run", module=outlier_module())


def _fragile_layer(run: Path) -> str:
    """The float model's node name of conv3 (the layer reading the outliers)."""
    import onnx

    model = onnx.load(str(run / "model.onnx"), load_external_data=False)
    return next(n.name for n in model.graph.node if n.op_type == "Conv" and "conv3.weight" in n.input)


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("bundles"))
    return copy


def test_plain_int8_misses_and_no_fallback_fails(outlier_run: Path, photos: Path, tmp_path: Path) -> None:
    run = _copy_run(outlier_run, tmp_path)
    config = BundleConfig(calibration_images=photos, fallback=False)
    with pytest.raises(BundleError, match="SQNR") as info:
        build_bundle(run, load_target(tight_profile(tmp_path)), config)
    section = info.value.result.artifacts["int8-qdq"]
    assert section["fallback"] == {"needed": True, "enabled": False, "note": "turned off (--no-fallback)"}
    assert "kept_in_float" not in section
    # the ranking is recorded even when the bundle fails: the fragile layer first
    assert section["sensitivity"]["layers"][0]["layer"] == _fragile_layer(run)
    assert not (run / "bundles" / "tight").exists()


def test_fallback_keeps_the_fragile_layer_in_float(outlier_run: Path, photos: Path, tmp_path: Path) -> None:
    import onnx

    run = _copy_run(outlier_run, tmp_path)
    result = build_bundle(run, load_target(tight_profile(tmp_path)), BundleConfig(calibration_images=photos))
    assert result.passed
    section = result.artifacts["int8-qdq"]
    kept = section["kept_in_float"]
    assert kept and kept[0]["layer"] == _fragile_layer(run) and "sensitivity rank 1" in kept[0]["reason"]
    fallback = section["fallback"]
    assert fallback["passed"] and fallback["before"]["failures"] and not fallback["after"]["failures"]
    assert fallback["after"]["sqnr_db"] > fallback["before"]["sqnr_db"] + 5
    # the layer computes from float inputs and float32 weights in the written model
    model = onnx.load(str(result.bundle_dir / "model.int8.onnx"))
    conv = next(n for n in model.graph.node if n.name == _fragile_layer(run))
    assert "conv3.weight__kept_float" in conv.input and "conv2d_1" in conv.input
    html = (result.bundle_dir / "report.html").read_text(encoding="utf-8")
    assert "Layers kept in float" in html and "sensitivity rank 1" in html and _fragile_layer(run) in html
    verified = verify_bundle(result.bundle_dir)
    assert verified.passed
    assert verified.sensitivity["int8-qdq"]["kept_in_float"] == [_fragile_layer(run)]


def test_fallback_budget_spent_still_fails(outlier_run: Path, photos: Path, tmp_path: Path) -> None:
    run = _copy_run(outlier_run, tmp_path)
    profile = tight_profile(tmp_path, fraction=0.0)
    with pytest.raises(BundleError, match="SQNR") as info:
        build_bundle(run, load_target(profile), BundleConfig(calibration_images=photos))
    assert info.value.result.artifacts["int8-qdq"]["fallback"]["enabled"] is False


def test_without_a_miss_nothing_changes(photos: Path, tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")  # the tiny model, no outliers: int8 passes as it is
    result = build_bundle(run, load_target("cpu-arm64"), BundleConfig(calibration_images=photos))
    section = result.artifacts["int8-qdq"]
    assert section["fallback"] == {"needed": False} and section["kept_in_float"] == []
    assert section["sensitivity"]["layers"], "the sensitivity is recorded for every lowered model"
    import onnx

    model = onnx.load(str(result.bundle_dir / "model.int8.onnx"))
    assert not any(t.name.endswith("__kept_float") for t in model.graph.initializer)


def test_vitis_fallback_runs_kept_layers_on_the_cpu(outlier_run: Path, photos: Path, tmp_path: Path) -> None:
    """XINT8 (per-tensor power-of-two) misses too; the kept layers show as CPU partitions and their cost."""
    import json

    run = _copy_run(outlier_run, tmp_path)
    text = load_target("vitis-ai-zcu104").source.read_text(encoding="utf-8")
    text = re.sub(r'^name = ".*"$', 'name = "dpu-tight"', text, count=1, flags=re.M)
    text = text.replace("min_sqnr_db = 12.0", "min_sqnr_db = 25.0")
    profile = tmp_path / "dpu-tight.toml"
    profile.write_text(
        text.replace("max_float_layers_fraction = 0.1", "max_float_layers_fraction = 0.5"), encoding="utf-8"
    )
    with pytest.raises(BundleError, match="SQNR"):
        build_bundle(run, load_target(profile), BundleConfig(calibration_images=photos, fallback=False))
    result = build_bundle(run, load_target(profile), BundleConfig(calibration_images=photos))
    section = result.artifacts["vitis-ai"]
    kept = [x["layer"] for x in section["kept_in_float"]]
    assert kept[0] == _fragile_layer(run)
    report = json.loads((result.bundle_dir / "dpu_report.json").read_text(encoding="utf-8"))
    on_cpu = {p["name"] for p in report["placements"] if p["rule"] == "kept-in-float"}
    assert on_cpu == set(kept) and all(p["device"] == "CPU" for p in report["placements"] if p["name"] in on_cpu)
    cost = section["fallback_cost"]
    assert cost["layers_on_cpu"] == len(kept) and 0 < cost["flops_fraction_on_cpu"] <= 1
    assert cost["dpu_subgraphs_after"] > cost["dpu_subgraphs_before"]
    assert "kept-in-float" in (result.bundle_dir / "dpu_report.md").read_text(encoding="utf-8")
    assert verify_bundle(result.bundle_dir).passed
