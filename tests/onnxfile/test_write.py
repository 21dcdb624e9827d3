"""The one streaming writer: onnx's own bytes in one file, a movable pair with external data, digests while writing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import export_onnx, tiny_module

from onnx_pipeline.errors import BundleError
from onnx_pipeline.files import sha256_file
from onnx_pipeline.onnxfile import load_parts, split_model, write_model
from onnx_pipeline.onnxfile import write as write_module
from onnx_pipeline.runtime.session import create_session


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_module(), tmp_path_factory.mktemp("write") / "model.onnx")


def _outputs(path: Path | bytes, sample: np.ndarray, **kwargs: object) -> np.ndarray:
    return create_session(path, **kwargs).run(None, {"input": sample})[0]  # type: ignore[arg-type]


def test_one_file_is_byte_for_byte_what_onnx_saves(tiny_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_model))
    onnx.save_model(model, str(tmp_path / "onnx.onnx"))
    written = write_model(model, tmp_path / "ours.onnx")
    assert (tmp_path / "ours.onnx").read_bytes() == (tmp_path / "onnx.onnx").read_bytes()
    assert written.sha256 == sha256_file(tmp_path / "ours.onnx") and written.data_file is None
    # From parts (arrays) too: the model parses to the same message.
    parts = split_model(model)
    write_model(parts.skeleton, tmp_path / "parts.onnx", weights=parts.weights)
    assert onnx.load(str(tmp_path / "parts.onnx")).SerializeToString() == model.SerializeToString()


def test_external_data_is_relative_aligned_hashed_and_movable(tiny_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_model))
    out = tmp_path / "a" / "model.onnx"
    out.parent.mkdir()
    written = write_model(model, out, external=True)
    assert written.data_file == "model.onnx.data"
    assert written.hashes(tmp_path) == {
        "a/model.onnx": sha256_file(out),
        "a/model.onnx.data": sha256_file(out.with_name("model.onnx.data")),
    }
    header = onnx.load(str(out), load_external_data=False)
    entries = [{e.key: e.value for e in t.external_data} for t in header.graph.initializer if t.external_data]
    assert entries and all(e["location"] == "model.onnx.data" and int(e["offset"]) % 4096 == 0 for e in entries)
    assert all(int(e["length"]) >= write_module.EXTERNAL_MIN_BYTES for e in entries)
    # Moved elsewhere and opened from another working directory, it still loads and computes the same.
    moved = tmp_path / "elsewhere"
    shutil.move(str(out.parent), moved)
    sample = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        np.testing.assert_array_equal(_outputs(moved / "model.onnx", sample), _outputs(tiny_model, sample))
    finally:
        os.chdir(cwd)
    # Back to one file from the external pair (the stored bytes are copied, not re-encoded).
    write_model(onnx.load(str(moved / "model.onnx"), load_external_data=False), tmp_path / "one.onnx",
                base=moved, external=False)  # fmt: skip
    assert (tmp_path / "one.onnx").read_bytes() == tiny_model.read_bytes()


def test_auto_goes_external_over_the_limit_and_one_file_refuses(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = onnx.load(str(tiny_model))
    monkeypatch.setattr(write_module, "PROTOBUF_LIMIT", 20_000)
    monkeypatch.setattr(write_module, "_HEADROOM", 0)
    assert write_model(model, tmp_path / "auto.onnx").data_file == "auto.onnx.data"
    with pytest.raises(BundleError, match="2 GiB single-file limit"):
        write_model(model, tmp_path / "one.onnx", external=False)


def test_refuses_to_overwrite_the_data_it_reads(tiny_model: Path, tmp_path: Path) -> None:
    write_model(onnx.load(str(tiny_model)), tmp_path / "model.onnx", external=True)
    header = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    with pytest.raises(ValueError, match="overwrite"):
        write_model(header, tmp_path / "model.onnx", base=tmp_path, external=True)


def test_load_parts_maps_external_data_read_only(tiny_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_model))
    write_model(model, tmp_path / "model.onnx", external=True)
    parts = load_parts(tmp_path / "model.onnx")
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert parts.weights and parts.maps
    for name, array in parts.weights.items():
        np.testing.assert_array_equal(array, expected[name])
        assert not array.flags.writeable  # a view of the mapped file: builders derive, never write
    stripped = [t for t in parts.skeleton.graph.initializer if t.name in parts.weights]
    assert not any(t.external_data or t.raw_data for t in stripped)
    parts.release()  # dropping the pages from this process leaves the arrays readable
    name = next(iter(parts.weights))
    np.testing.assert_array_equal(parts.weights[name], expected[name])
    # The parts run in onnxruntime without their weights being serialised (referred to in their file).
    source = parts.session_source()
    sample = np.ones((1, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(
        _outputs(source.skeleton.SerializeToString(), sample, external_initializers=source.external,
                 external_data_folder=source.folder),
        _outputs(tiny_model, sample),
    )  # fmt: skip
