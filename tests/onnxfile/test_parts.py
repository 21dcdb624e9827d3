"""ModelParts: a single-file model's weights viewed in the mapped file, the one weightless copy and its undoing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import export_onnx, tiny_module

from onnx_pipeline.errors import InputError
from onnx_pipeline.onnxfile import load_parts, restore_initializers, weightless_copy
from onnx_pipeline.onnxfile.scan import split_raw_data


@pytest.fixture(scope="module")
def single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_module(), tmp_path_factory.mktemp("parts") / "model.onnx")


def test_single_file_weights_are_views_of_the_mapped_file(single_file: Path) -> None:
    model = onnx.load(str(single_file))
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    parts = load_parts(single_file)
    large = {n for n, a in expected.items() if a.size > 1024}
    assert set(parts.weights) == large and parts.maps
    for name, array in parts.weights.items():
        np.testing.assert_array_equal(array, expected[name])
        assert not array.flags.writeable and not array.flags.owndata
    # the skeleton is the model without those tensors' data, everything else as stored
    for init in parts.skeleton.graph.initializer:
        if init.name in large:
            assert not init.raw_data and list(init.dims) == list(expected[init.name].shape)
    assert [n.op_type for n in parts.skeleton.graph.node] == [n.op_type for n in model.graph.node]
    stored = single_file.read_bytes()
    head, raw = split_raw_data(stored, 1024)
    assert len(head) < len(stored) and sum(1 for r in raw if r) == len(large)


def test_a_truncated_file_is_a_one_line_input_error(single_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(single_file.read_bytes()[: single_file.stat().st_size // 2])
    with pytest.raises(InputError, match="not a readable ONNX model"):
        load_parts(broken)


def test_weightless_copy_as_inputs_and_back(single_file: Path) -> None:
    model = onnx.load(str(single_file))
    names = {t.name for t in model.graph.initializer if onnx.numpy_helper.to_array(t).size > 1024}
    copy = weightless_copy(model, names, as_inputs=True)
    assert names <= {v.name for v in copy.graph.input} and not names & {t.name for t in copy.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=True)  # onnx's tools work on it as it is
    restore_initializers(inferred, [t for t in model.graph.initializer if t.name in names])
    assert {v.name for v in inferred.graph.input} == {v.name for v in model.graph.input}
    assert sorted(t.name for t in inferred.graph.initializer) == sorted(t.name for t in model.graph.initializer)
    placeholders = weightless_copy(model, names)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in placeholders.graph.initializer if t.name in names)
