"""Fidelity of the power-of-two model on a trained CNN (digits) and on VGG16 (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    HARDWARE,
    build_artifact,
    digits_split,
    export_onnx,
    rescaled_vgg16,
    trained_digits_cnn,
)


def _run(path: Path, data: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[None]})[0] for x in data])


def test_digits_power_of_two_loses_at_most_one_point(tmp_path: Path) -> None:
    import torch

    from onnx_pipeline.targets import load_target

    x_train, y_train, x_test, y_test = digits_split()
    model = trained_digits_cnn(x_train, y_train)
    path = export_onnx(model.eval(), tmp_path / "model.onnx", example=torch.from_numpy(x_test[:2]))

    target = load_target("vitis-ai-zcu102")
    artifacts = build_artifact(path, target, "vitis-ai", x_train[:64], x_test, tmp_path / "bundle", synthetic=False)
    fp32 = _run(tmp_path / "bundle" / "model_fp32.onnx", x_test).argmax(1)
    xint8 = _run(tmp_path / "bundle" / "model_xint8_qdq.onnx", x_test).argmax(1)
    acc_fp32 = float(np.mean(fp32 == y_test))
    acc_xint8 = float(np.mean(xint8 == y_test))
    assert acc_fp32 > 0.9, f"the CNN did not train ({acc_fp32:.3f})"
    assert acc_fp32 - acc_xint8 <= 0.01, f"fp32 {acc_fp32:.4f} vs power-of-two {acc_xint8:.4f}"
    assert artifacts.section["fidelity_float_vs_xint8"]["passed"]
    assert artifacts.section["dpu_report"]["on_cpu"] == 0


@pytest.mark.slow
def test_vgg16_every_board(tmp_path: Path) -> None:

    from onnx_pipeline.targets import load_target
    from onnx_pipeline.vitis.dpu_report import build_dpu_report
    from onnx_pipeline.vitis.graph import load_parts, to_static_opset17

    path = export_onnx(rescaled_vgg16(), tmp_path / "vgg16.onnx", size=224)
    parts = load_parts(path)
    to_static_opset17(parts)
    boards = [t for t in (load_target(p.stem) for p in sorted(HARDWARE.glob("vitis-ai-*.toml"))) if t.dpu]
    assert len(boards) >= 8, [t.name for t in boards]
    for target in boards:
        board = target.name
        report = build_dpu_report(parts.skeleton, target.dpu)
        for node in report.nodes:
            if node.op_type in ("Conv", "Gemm", "MaxPool"):
                assert node.device == "DPU", f"{board}: {node.name} on the CPU ({node.rule}: {node.detail})"
    del parts
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    heldout = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    artifacts = build_artifact(
        path, load_target("vitis-ai-vek280"), "vitis-ai", calibration, heldout, tmp_path / "bundle"
    )
    (figures,) = artifacts.section["fidelity_float_vs_xint8"]["outputs"]
    assert figures["min_cosine"] >= 0.99, figures
