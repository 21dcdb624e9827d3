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


def _outputs(session: object, x: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: x})  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("external", [True, False], ids=["data-file", "single-file"])
def test_session_source_refers_to_the_weights_in_their_file(single_file: Path, tmp_path: Path, external: bool) -> None:
    from onnx_pipeline.onnxfile import write_model
    from onnx_pipeline.runtime.session import create_session

    path = tmp_path / "model.onnx"
    write_model(onnx.load(str(single_file)), path=path, external=external, min_external_bytes=4096)
    parts = load_parts(path)
    source = parts.session_source()
    # every large weight is referred to where it is stored: none handed over (onnxruntime would copy it)
    assert source.folder == path.parent.resolve() and source.external == ([], [])
    refs = [t for t in source.skeleton.graph.initializer if t.name in parts.weights]
    assert refs and all(t.data_location == onnx.TensorProto.EXTERNAL for t in refs)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = _outputs(create_session(path), x)
    got = _outputs(create_session(source.skeleton.SerializeToString(), external_data_folder=source.folder), x)
    np.testing.assert_array_equal(got[0], expected[0])


def test_session_source_hands_over_what_its_file_no_longer_holds(single_file: Path, tmp_path: Path) -> None:
    """A weight derived in memory, and every weight of a file replaced since it was mapped, go in memory."""
    from onnx_pipeline.runtime.session import create_session

    path = tmp_path / "model.onnx"
    path.write_bytes(single_file.read_bytes())
    parts = load_parts(path)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = _outputs(create_session(path), x)
    changed = next(iter(parts.weights))
    parts.weights[changed] = parts.weights[changed] * 2  # derived: not the file's bytes
    source = parts.session_source()
    assert source.external[0] == [changed] and source.folder is not None
    doubled = _outputs(
        create_session(source.skeleton.SerializeToString(), external_initializers=source.external,
                       external_data_folder=source.folder), x)  # fmt: skip
    assert not np.allclose(doubled[0], expected[0])
    parts.weights[changed] = parts.weights[changed] / 2
    zeroed = onnx.load(str(path))
    for init in zeroed.graph.initializer:
        init.raw_data = bytes(len(init.raw_data))
    path.unlink()
    onnx.save(zeroed, str(path))  # another file at the same path: its bytes are not the mapped ones
    source = parts.session_source()
    assert source.folder is None and sorted(source.external[0]) == sorted(parts.weights)
    got = _outputs(create_session(source.skeleton.SerializeToString(), external_initializers=source.external), x)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)
