"""The AMD NPU bundles (vaiml, ryzen-ai): hand-off files, scripts that refuse to fake, fidelity on trained models."""

from __future__ import annotations

import dataclasses
import json
import py_compile
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import (
    build_artifact,
    digits_split,
    export_onnx,
    make_run_folder,
    rescaled_vgg16,
    trained_digits_cnn,
)


def _target(name: str, config: str | None = None) -> Any:
    from onnx_pipeline.targets import load_target

    target = load_target(name)
    if config is not None:
        target = dataclasses.replace(target, npu=dataclasses.replace(target.npu, quant_config=config))
    return target


def _data(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((8, 3, size, size)).astype(np.float32),
        rng.standard_normal((4, 3, size, size)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    tmp = tmp_path_factory.mktemp("npu")
    make_run_folder(tmp / "run")
    calibration, heldout = _data()
    out = {}
    for label, name, kind, config in (
        ("vek385", "vitis-ai-vek385", "vaiml", None),
        ("xdna2", "ryzen-ai-xdna2", "ryzen-ai", None),
        ("vek385-bf16", "vitis-ai-vek385", "vaiml", "BF16"),
    ):
        result = build_artifact(
            tmp / "run" / "model.onnx", _target(name, config), kind, calibration, heldout, tmp / label
        )
        out[label] = (tmp / label, result)
    return out


def test_bundle_files_and_relative_cache(tiny_bundles: dict[str, tuple[Path, Any]]) -> None:
    for label, model in (("vek385", "model_vint8_qdq.onnx"), ("xdna2", "model_xint8_qdq.onnx")):
        bundle, result = tiny_bundles[label]
        for name in (
            model,
            "model_fp32.onnx",
            "quant_params.json",
            "npu_report.json",
            "npu_report.md",
            "fidelity.json",
            "provider_options.json",
            "compile_model.py",
            "run_npu.py",
            "quark_requantize.py",
            "calibration/samples.npy",
            "AMD_NPU_README.md",
            "vitisai_config.json",
        ):
            assert (bundle / name).is_file(), f"{label}: {name}"
        options = json.loads((bundle / "provider_options.json").read_text())
        assert options["model"] == model and options["provider_options"]["cache_dir"] == ".vaip_cache"
        assert not any(str(v).startswith("/") for v in options["provider_options"].values()), "no absolute path"
        assert result.models[0].fidelity.passed and result.section["npu_report"]["on_cpu"] == 0
        readme = (bundle / "AMD_NPU_README.md").read_text()
        assert "compile_model.py" in readme and "run_npu.py" in readme and "Not confirmed" in readme
        for script in ("compile_model.py", "run_npu.py", "quark_requantize.py"):
            py_compile.compile(str(bundle / script), doraise=True)


def test_vitisai_configs(tiny_bundles: dict[str, tuple[Path, Any]]) -> None:
    vaiml = json.loads((tiny_bundles["vek385"][0] / "vitisai_config.json").read_text())
    passes = {p["name"]: p for p in vaiml["passes"]}
    assert list(passes) == ["init", "vaiml_partition"] and vaiml["target"] == "VAIML"
    assert passes["vaiml_partition"]["vaiml_config"]["device"] == "ve2-xc2ve3858"
    options = json.loads((tiny_bundles["vek385"][0] / "provider_options.json").read_text())["provider_options"]
    assert options["config_file"] == "vitisai_config.json" and options["target"] == "VAIML"
    ryzen = json.loads((tiny_bundles["xdna2"][0] / "provider_options.json").read_text())["provider_options"]
    assert ryzen["xclbin"].endswith(".xclbin") and "config_file" not in ryzen  # INT8: the NPU binary
    bf16 = json.loads((tiny_bundles["vek385-bf16"][0] / "vitisai_config.json").read_text())
    assert bf16["passes"][1]["vaiml_config"]["enable_f32_to_bf16_conversion"] is True


def test_bf16_bundle_deploys_the_float_model_and_judges_a_bf16_simulation(
    tiny_bundles: dict[str, tuple[Path, Any]],
) -> None:
    bundle, result = tiny_bundles["vek385-bf16"]
    assert json.loads((bundle / "provider_options.json").read_text())["model"] == "model_fp32.onnx"
    (model,) = result.models
    assert model.file == "model_bf16_sim.onnx" and model.precision == "bf16" and model.fidelity.passed
    cosine = result.section["fidelity_float_vs_quantized"]["outputs"][0]["min_cosine"]
    assert 0.999 < cosine < 1.0  # bfloat16 rounding happened, and costs little


def test_scripts_refuse_without_amds_toolchain(tiny_bundles: dict[str, tuple[Path, Any]], tmp_path: Path) -> None:
    bundle = tiny_bundles["xdna2"][0]
    done = subprocess.run(
        [sys.executable, str(bundle / "compile_model.py")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2 and "AMD's toolchain is not present here" in done.stderr
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    done = subprocess.run(
        [sys.executable, str(bundle / "run_npu.py"), str(image)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0 and "VitisAIExecutionProvider" in done.stderr
    assert not (bundle / ".vaip_cache").exists(), "nothing compiled or cached where the toolchain is absent"


def test_a_model_that_would_run_entirely_on_the_cpu_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from onnx_pipeline.errors import BundleError
    from tests.vitis.graphs import conv_model, save

    model = conv_model()
    branch = helper.make_graph(
        [helper.make_node("Identity", ["relu"], ["y"])],
        "b",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model.graph.initializer.append(helper.make_tensor("cond", TensorProto.BOOL, [], [True]))
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    calibration, heldout = _data(20)
    with pytest.raises(BundleError, match="whole model would run on the CPU") as info:
        build_artifact(
            save(model, tmp_path / "m.onnx"),
            _target("ryzen-ai-xdna2"),
            "ryzen-ai",
            calibration,
            heldout,
            tmp_path / "b",
        )
    assert info.value.result["whole_model_on_cpu"] is True


def _trained_cnn(x: np.ndarray, y: np.ndarray, path: Path) -> Path:
    """The digits CNN (``trained_digits_cnn``), exported with the dynamo exporter and a dynamic batch."""
    import torch

    return export_onnx(trained_digits_cnn(x, y), path, example=torch.from_numpy(x[:2]))


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from onnx_pipeline.runtime.session import create_session

    session = create_session(path, qdq_as_float=True)
    logits = np.concatenate([session.run(None, {session.get_inputs()[0].name: s[None]})[0] for s in x])
    return float(np.mean(logits.argmax(1) == y))


def test_trained_digits_cnn_keeps_its_accuracy_in_every_npu_format(tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = digits_split()
    source = _trained_cnn(x_train, y_train, tmp_path / "digits.onnx")
    cases = (
        ("vitis-ai-vek385", "vaiml", "VINT8"),
        ("ryzen-ai-xdna2", "ryzen-ai", "XINT8"),
        ("ryzen-ai-xdna2", "ryzen-ai", "A8W8"),
        ("ryzen-ai-xdna2", "ryzen-ai", "A16W8"),
    )
    for name, kind, config in cases:
        out = tmp_path / config
        result = build_artifact(source, _target(name, config), kind, x_train[:64], x_test, out, synthetic=False)
        fp32 = _accuracy(out / "model_fp32.onnx", x_test, y_test)
        quantized = _accuracy(out / f"model_{config.lower()}_qdq.onnx", x_test, y_test)
        assert fp32 > 0.9, f"the CNN did not train ({fp32:.3f})"
        assert fp32 - quantized <= 0.01, f"{config}: fp32 {fp32:.4f} vs {quantized:.4f}"
        assert result.section["fidelity_float_vs_quantized"]["passed"], config
        assert result.section["npu_report"]["on_cpu"] == 0, config


@pytest.mark.slow
def test_vgg16_vint8_and_a8w8_bundles(tmp_path: Path) -> None:
    """VGG16 (random weights rescaled to unit activations) through the VEK385 and Ryzen AI A8W8 builders."""
    import torch

    model = rescaled_vgg16()
    path = tmp_path / "vgg16.onnx"
    torch.onnx.export(
        model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=True, input_names=["input"], output_names=["output"]
    )
    del model
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    heldout = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    for name, kind, config in (("vitis-ai-vek385", "vaiml", "VINT8"), ("ryzen-ai-xdna2", "ryzen-ai", "A8W8")):
        result = build_artifact(path, _target(name, config), kind, calibration, heldout, tmp_path / config)
        (figures,) = result.section["fidelity_float_vs_quantized"]["outputs"]
        assert figures["min_cosine"] >= 0.99, (config, figures)
        assert result.section["npu_report"]["on_cpu"] == 0, (config, result.section["npu_report"]["cpu_nodes"])
