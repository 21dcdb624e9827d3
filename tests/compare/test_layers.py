"""compare_onnx_models: SQNR and cosine per layer of a float model against its lowered form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_pipeline.compare.layers import compare_onnx_models
from onnx_pipeline.targets import load_target
from tests.helpers import build_artifact


def _inputs(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


def test_int8_qdq_layers_against_the_float_model(tiny_run: Path, tmp_path: Path) -> None:
    result = build_artifact(
        tiny_run / "model.onnx", load_target("cpu-x86_64"), "int8-qdq", _inputs(16, 1), _inputs(), tmp_path / "int8"
    )
    table = compare_onnx_models(tiny_run / "model.onnx", tmp_path / "int8" / result.models[0].file, _inputs())
    quantized = table.quantized_rows()
    assert len(quantized) >= 5 and table.quantized_layers == len(quantized)
    assert all(r.lowered_tensor.endswith("DequantizeLinear_Output") for r in quantized)  # what the next layer reads
    assert all(15 < r.sqnr_db < 80 and r.min_cosine > 0.99 for r in quantized)
    assert [r.module for r in quantized][:2] == ["1", "3"]  # graph order, PyTorch modules from the float model
    assert table.worst(1)[0].sqnr_db == min(r.sqnr_db for r in quantized)


def test_the_layer_that_was_changed_is_the_first_below_a_threshold(tiny_run: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_run / "model.onnx"))
    weight = next(i for i in model.graph.initializer if i.name == "2.weight")
    array = numpy_helper.to_array(weight).copy()
    array[:2] *= 1.3
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    table = compare_onnx_models(tiny_run / "model.onnx", model, [_inputs(2), _inputs(1, 5)])
    assert table.samples == 3 and table.rows[0].sqnr_db > 100  # the first conv is untouched (rounding only)
    first = table.first_below(60.0, quantized_only=False)
    assert first is not None and first.module == "2" and first.op_type == "Conv"
