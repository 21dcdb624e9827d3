"""CLI: targets, export --target, bundle, verify of a bundle; the wheel carries hardware/."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from typer.testing import CliRunner

from onnx_pipeline.cli import app
from tests.helpers import HARDWARE, make_run_folder, outlier_module, tight_profile
from tests.helpers import assert_user_error as _assert_user_error

runner = CliRunner()


def test_targets_lists_every_profile() -> None:
    result = runner.invoke(app, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    names = {row["name"] for row in json.loads(result.stdout)}
    assert names == {p.stem for p in HARDWARE.glob("*.toml")}
    assert {"cpu-x86_64", "cpu-arm64", "cuda", "tensorrt"} <= names


def test_export_with_target_then_verify_the_bundle(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["export", "-m", "tiny-vgg", "-w", "random", "-o", str(out), "--no-isolate", "--target", "cpu-x86_64",
         "--calibration-images", str(photos), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["steps"]["bundles"]["cpu-x86_64"]["passed"] is True
    bundle = out / "bundles" / "cpu-x86_64"
    assert (bundle / "manifest.json").is_file() and (bundle / "model.int8.onnx").is_file()
    verified = runner.invoke(app, ["verify", str(bundle)])
    assert verified.exit_code == 0, verified.output
    assert "match their sha256" in verified.stdout
    assert "sensitivity int8-qdq: most sensitive" in verified.stdout
    (bundle / "model.int8.onnx").write_bytes(b"tampered")
    tampered = runner.invoke(app, ["verify", str(bundle)])
    assert tampered.exit_code == 1 and "model.int8.onnx" in tampered.stderr and "Traceback" not in tampered.output


def test_bundle_command_and_unknown_target(tiny_run: Path, tmp_path: Path) -> None:
    _assert_user_error(runner.invoke(app, ["bundle", str(tiny_run), "-t", "fpga-9000"]), "fpga-9000")
    assert not (tiny_run / "bundles").exists()
    result = runner.invoke(app, ["export", "-m", "tiny-vgg", "-o", str(tmp_path / "o"), "-t", "nope", "--no-isolate"])
    _assert_user_error(result, "nope")
    assert not (tmp_path / "o").exists()


def test_wheel_carries_the_hardware_profiles(tmp_path: Path) -> None:
    import os

    from hatchling.builders.wheel import WheelBuilder

    root = HARDWARE.parent
    cwd = os.getcwd()
    try:
        os.chdir(root)
        wheel = Path(next(iter(WheelBuilder(str(root)).build(directory=str(tmp_path), versions=["standard"]))))
    finally:
        os.chdir(cwd)
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in HARDWARE.glob("*.toml"):
        assert f"onnx_pipeline/hardware/{profile.name}" in names
    assert "onnx_pipeline/vitis/templates/run_on_board.py.tmpl" in names


def test_bundle_no_fallback_fails_and_fallback_repairs(tmp_path: Path, photos: Path) -> None:
    run = make_run_folder(tmp_path / "run", module=outlier_module())
    profile = str(tight_profile(tmp_path))
    args = ["bundle", str(run), "-t", profile, "--calibration-images", str(photos)]
    failed = runner.invoke(app, [*args, "--no-fallback"])
    assert failed.exit_code == 1 and "SQNR" in failed.stderr and "Traceback" not in failed.output
    repaired = runner.invoke(app, args)
    assert repaired.exit_code == 0, repaired.output
    verified = runner.invoke(app, ["verify", str(run / "bundles" / "tight")])
    assert verified.exit_code == 0, verified.output
    assert "kept in float: node_conv2d_2" in verified.stdout
