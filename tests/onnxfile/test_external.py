"""Streaming an externally stored model into one file gives the model onnx would have written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_pipeline.files import sha256_file
from onnx_pipeline.onnxfile import inline_external_data


def test_inline_external_data_round_trip(tiny_run: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_run / "model.onnx"))
    external = tmp_path / "ext.onnx"
    onnx.save_model(model, str(external), save_as_external_data=True, location="ext.bin", size_threshold=0)
    model = onnx.load(str(tiny_run / "model.onnx"))  # save_model moved the original's tensors out
    out = tmp_path / "inline.onnx"
    digest = inline_external_data(external, out)
    assert digest == sha256_file(out)
    inlined = onnx.load(str(out))
    onnx.checker.check_model(inlined, full_check=True)
    assert not any(t.external_data for t in inlined.graph.initializer)
    assert [n.op_type for n in inlined.graph.node] == [n.op_type for n in model.graph.node]
    for a, b in zip(inlined.graph.initializer, model.graph.initializer, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
