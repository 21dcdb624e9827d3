"""Every target handles a model stored with external data, as a model over 2 GB must be (fast, in miniature).

The 2 GiB limit is lowered to 40 kB so that tiny-vgg (57 kB of weights) is "too large for one file":
each step must then write external data with relative paths, list it in the manifest, hash it, and
keep the bundle loadable from elsewhere. tests/test_large_model.py does the same with a real 2 GB model.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from onnx_pipeline import api
from onnx_pipeline.artifacts import fp32_optimized
from onnx_pipeline.onnxfile import write as write_module
from tests.helpers import check_moved_bundles

TARGETS = ("cpu-x86_64", "cuda", "vitis-ai-kv260")
LIMIT = 40_000


def _locations(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_module, "PROTOBUF_LIMIT", LIMIT)
    monkeypatch.setattr(write_module, "_HEADROOM", 0)
    monkeypatch.setattr(fp32_optimized, "EXTERNAL_ABOVE", LIMIT)


def test_every_target_writes_external_data_when_the_model_is_too_large(
    small_limit: None, tmp_path: Path, photos: Path
) -> None:
    run = tmp_path / "run"
    api.export("tiny-vgg", weights="random", output=run, external_data=True, targets=TARGETS,
               calibration_images=photos)  # fmt: skip
    assert json.loads((run / "manifest.json").read_text())["external_data"] == "model.onnx.data"
    cpu, cuda, vitis = (run / "bundles" / t for t in TARGETS)
    manifest = json.loads((cpu / "manifest.json").read_text())
    records = {m["file"]: m for m in manifest["models"]}
    assert _locations(cpu / "model.fp32.onnx") == {"model.fp32.onnx.data"}
    assert records["model.fp32.onnx"]["external_data"] == ["model.fp32.onnx.data"]
    assert "model.fp32.onnx.data" in manifest["files"]
    assert "model.fp32.ort" not in records and manifest["artifacts"]["ort"]["built"] is False
    assert "cannot hold" in (cpu / "README.md").read_text()
    assert not _locations(cpu / "model.int8.onnx")  # int8 fits in one file: one file
    assert not _locations(cuda / "model.fp16.onnx")
    assert _locations(vitis / "model_fp32.onnx") == {"model_fp32.onnx.data"}
    assert not _locations(vitis / "model_xint8_qdq.onnx")
    # a bundle copied elsewhere verifies (hashes, fidelity) and predicts from another working directory
    check_moved_bundles(run, TARGETS, tmp_path / "moved", next(photos.glob("*.jpg")), tmp_path)


def test_fp16_and_triton_carry_their_data_file(small_limit: None, tmp_path: Path, photos: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(write_module, "PROTOBUF_LIMIT", 20_000)  # now the fp16 model is too large too
    run = tmp_path / "run"
    api.export("tiny-vgg", weights="random", output=run, targets=["cuda"], calibration_images=photos)
    cuda = run / "bundles" / "cuda"
    assert _locations(cuda / "model.fp16.onnx") == {"model.fp16.onnx.data"}
    section = json.loads((cuda / "manifest.json").read_text())["artifacts"]["triton"]
    served = cuda / section["model"]
    assert _locations(served) == {"model.fp16.onnx.data"}
    assert (served.parent / "model.fp16.onnx.data").read_bytes() == (cuda / "model.fp16.onnx.data").read_bytes()
    assert section["external_data"] == [str(Path(section["model"]).parent / "model.fp16.onnx.data")]
    assert api.verify(cuda).status == "passed"
