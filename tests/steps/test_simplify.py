"""Simplification: applied when it helps, kept out when it fails or changes outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_pipeline.config import SimplifyConfig
from onnx_pipeline.steps import simplify
from onnx_pipeline.steps.check import check_model
from onnx_pipeline.steps.simplify import simplify_model


def _foldable_model(path: Path, *, external: bool = False) -> None:
    """x @ W + (c1 + c2): the Add of two constants folds; W (2 MiB) is a MatMul weight."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((512, 1024)).astype(np.float32), "W")
    c1 = numpy_helper.from_array(np.ones(1024, np.float32), "c1")
    c2 = numpy_helper.from_array(np.full(1024, 2.0, np.float32), "c2")
    nodes = [
        helper.make_node("Add", ["c1", "c2"], ["c"]),
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("Identity", ["xw"], ["xw_id"]),
        helper.make_node("Add", ["xw_id", "c"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1024])],
        [weight, c1, c2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


SAMPLE = np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32)


@pytest.mark.parametrize("external", [False, True])
def test_simplify_applies_and_keeps_the_weights_out(tmp_path: Path, external: bool) -> None:
    src, dst = tmp_path / "raw.onnx", tmp_path / "model.onnx"
    _foldable_model(src, external=external)
    before = onnx.load(str(src))
    result = simplify_model(src, dst, SimplifyConfig(), sample=SAMPLE)
    assert result.applied and result.changed
    assert result.before.nodes == 4 and result.after.nodes < 4
    assert result.weights_kept_out == 1  # W never went through the simplifier
    after = onnx.load(str(dst))
    weights = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    np.testing.assert_array_equal(weights["W"], numpy_helper.to_array(before.graph.initializer[0]))
    assert [i.name for i in after.graph.input] == ["input"]
    check_model(dst)
    assert result.output_max_abs_diff is not None and result.output_max_abs_diff < 1e-4


def test_simplifier_failure_keeps_the_unsimplified_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "raw.onnx", tmp_path / "model.onnx"
    _foldable_model(src)
    original = src.read_bytes()

    def broken(_model: object, _backend: str) -> object:
        raise RuntimeError("simulated simplifier crash")

    monkeypatch.setattr(simplify, "_run_simplifier", broken)
    result = simplify_model(src, dst, SimplifyConfig(), sample=SAMPLE)
    assert not result.applied and "simulated simplifier crash" in result.reason
    assert dst.read_bytes() == original


def test_simplified_model_with_different_outputs_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "raw.onnx", tmp_path / "model.onnx"
    _foldable_model(src)
    real = simplify._run_simplifier

    def wrong(model: object, backend: str) -> object:
        out = real(model, backend)
        for init in out.graph.initializer:  # a folded constant that came out wrong
            if init.name != "W":
                array = numpy_helper.to_array(init) + 1.0
                init.CopyFrom(numpy_helper.from_array(array, init.name))
        return out

    monkeypatch.setattr(simplify, "_run_simplifier", wrong)
    result = simplify_model(src, dst, SimplifyConfig(), sample=SAMPLE)
    assert not result.applied and result.reason.startswith("refused")
    assert result.output_max_abs_diff == pytest.approx(1.0, abs=1e-4)
    assert len(onnx.load(str(dst)).graph.node) == 4


def test_disabled_and_unchanged(tmp_path: Path, tiny_run: Path) -> None:
    src, dst = tmp_path / "raw.onnx", tmp_path / "model.onnx"
    _foldable_model(src)
    assert simplify_model(src, dst, SimplifyConfig(enabled=False)).reason.startswith("disabled")
    shutil.copy(tiny_run / "model.onnx", src)
    result = simplify_model(src, dst, SimplifyConfig(backend="onnxslim"), sample=None)
    assert not result.changed and result.reason.startswith("no change")
