"""A model over 2 GB through export with every kind of target, verify RUN, verify BUNDLE and predict.

The model (tests/models/large_linear.py: 2.16 GB of float32 weights in a few Linear layers) cannot be
one protobuf: each step must carry its weights as external data, with relative paths, hashed in the
manifests, so that a bundle copied elsewhere still loads. The inputs are tiny (32×32) so the test is
bounded by reading and writing the weights, not by arithmetic.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import onnx
import pytest

from onnx_pipeline import api
from onnx_pipeline.onnxfile import PROTOBUF_LIMIT
from tests.helpers import check_moved_bundles

MODELS = Path(__file__).resolve().parent / "models"
FACTORY = f"{MODELS / 'large_linear.py'}:build"
#: the DPU flow and AMD's NPU flows: (target, its quantized model)
VITIS = (
    ("vitis-ai-kv260", "model_xint8_qdq.onnx"),
    ("vitis-ai-vek385", "model_vint8_qdq.onnx"),
    ("ryzen-ai-xdna2", "model_xint8_qdq.onnx"),
)
#: the seed's PyTorch paths (rebuilt from the factory file: trusted here, it is the test's own)
TORCH = ("torchscript", "torchserve")


def _locations(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


@pytest.mark.slow
def test_a_model_over_2gb_goes_through_every_step_and_target(tmp_path: Path) -> None:
    """Bundles of this model are 1.1-4.3 GB each. The export builds the smallest one (cuda) with the run;
    every other target is bundled from the run one at a time, and each bundle, once checked, is moved
    elsewhere, checked there and deleted: the test holds the run and one bundle at a time (8.6 GB at most,
    measured: the run, then torchserve's model.pt, the archiver's staged copy of it and model.mar) rather
    than all of them, twice, at once (about 35 GB, which filled a CI machine's disk)."""
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(photos / f"{name}.jpg")
    run, elsewhere, photo = tmp_path / "run", tmp_path / "elsewhere", photos / "chelsea.jpg"
    report = api.export(FACTORY, weights="random", output=run, targets=["cuda"], calibration_images=photos,
                        images=photos, isolate=True)  # fmt: skip
    assert report.status == "passed"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["external_data"] == "model.onnx.data" and "model.onnx.data" in manifest["files"]
    assert (run / "model.onnx.data").stat().st_size > PROTOBUF_LIMIT
    assert api.verify(run, trust_source=True, isolate=True).status == "passed"

    # cuda: fp16 fits in one file; Triton serves it
    cuda = run / "bundles" / "cuda"
    assert not _locations(cuda / "model.fp16.onnx")
    served = json.loads((cuda / "manifest.json").read_text())["artifacts"]["triton"]["model"]
    assert (cuda / served).read_bytes()[:64] == (cuda / "model.fp16.onnx").read_bytes()[:64]
    _verify_move_and_drop(run, ["cuda"], elsewhere, photo, tmp_path)

    assert _bundle(run, "cpu-x86_64", photos)
    cpu = run / "bundles" / "cpu-x86_64"
    # fp32 optimised offline, its initializers in a data file of its own, named relative to the model
    assert _locations(cpu / "model.fp32.onnx") == {"model.fp32.onnx.data"}
    cpu_manifest = json.loads((cpu / "manifest.json").read_text())
    records = {m["file"]: m for m in cpu_manifest["models"]}
    assert records["model.fp32.onnx"]["external_data"] == ["model.fp32.onnx.data"]
    assert "model.fp32.onnx.data" in cpu_manifest["files"]
    # the ORT format cannot hold it: the bundle says so and is built without it
    assert "model.fp32.ort" not in records and not (cpu / "model.fp32.ort").exists()
    assert cpu_manifest["artifacts"]["ort"]["built"] is False
    assert "cannot hold" in (cpu / "README.md").read_text()
    # int8 fits in one file
    assert not _locations(cpu / "model.int8.onnx")
    _verify_move_and_drop(run, ["cpu-x86_64"], elsewhere, photo, tmp_path)

    # Vitis AI and AMD's NPU flows: the float model with external data, the quantized model in one file
    for target, quantized in VITIS:
        assert _bundle(run, target, photos)
        assert _locations(run / "bundles" / target / "model_fp32.onnx") == {"model_fp32.onnx.data"}, target
        assert not _locations(run / "bundles" / target / quantized), target
        _verify_move_and_drop(run, [target], elsewhere, photo, tmp_path)

    # TorchScript and TorchServe: model.pt and model.mar are zip64 archives, they hold it as it is
    for target in TORCH:
        assert api.bundle(run, [target], trust_source=True).status == "passed"
        assert api.verify(run / "bundles" / target).status == "passed", target
        if target == "torchscript":
            assert (run / "bundles" / target / "model.pt").stat().st_size > PROTOBUF_LIMIT
        else:
            with zipfile.ZipFile(run / "bundles" / target / "model.mar") as archive:
                assert archive.getinfo("model.pt").file_size > PROTOBUF_LIMIT
        shutil.rmtree(run / "bundles" / target)


def _bundle(run: Path, target: str, photos: Path) -> bool:
    return api.bundle(run, [target], calibration_images=photos, heldout_images=photos).status == "passed"


def _verify_move_and_drop(run: Path, targets: Sequence[str], dest: Path, photo: Path, cwd: Path) -> None:
    """Each bundle verifies where it was built, then moved elsewhere verifies and predicts, then is deleted."""
    for target in targets:
        assert api.verify(run / "bundles" / target).status == "passed", target
    check_moved_bundles(run, targets, dest, photo, cwd, keep_run=True)
    for target in targets:
        shutil.rmtree(dest / target)
