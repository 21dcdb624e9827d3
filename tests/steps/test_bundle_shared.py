"""Bundles built faster are the same bundles: targets of one call share work without changing a bit.

The reference files here are made the way the bundle step made them before it shared its inputs
and converted in bulk (a fresh full model per builder, onnxruntime's fp16 converter on it,
``onnx.save``): the models must be byte-identical where the algorithm did not change, and the
ORT-format model (now converted from the already-optimised model) must compute the same outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_pipeline import api
from onnx_pipeline.config import BundleConfig
from onnx_pipeline.manifest import BUNDLE_UNLISTED
from onnx_pipeline.onnxfile import infer_shapes
from onnx_pipeline.runtime.session import SessionSettings, create_session
from onnx_pipeline.steps.bundle import SharedInputs
from onnx_pipeline.targets import load_target

TARGETS = ("cpu-x86_64", "cuda", "vitis-ai-kv260")


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> Path:
    """tiny-vgg exported with three targets in one call (their bundles share the model and the data)."""
    out = tmp_path_factory.mktemp("shared") / "run"
    steps: list[str] = []
    api.export("tiny-vgg", weights="random", output=out, targets=TARGETS, calibration_images=photos,
               progress=steps.append)  # fmt: skip
    # the library reports each artifact of each bundle as it starts
    assert "bundle cuda: fp16" in steps and "bundle cpu-x86_64: int8-qdq" in steps
    return out


def _full_model(run: Path) -> onnx.ModelProto:
    model = onnx.load(str(run / "model.onnx"))
    infer_shapes(model)
    return model


def test_models_are_the_ones_the_unshared_builders_wrote(shared_run: Path, photos: Path, tmp_path: Path) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from onnx_pipeline.artifacts.int8_qdq import quantize_qdq

    cpu, cuda = shared_run / "bundles" / "cpu-x86_64", shared_run / "bundles" / "cuda"
    # fp32-optimized: the run's model optimised offline by onnxruntime
    create_session(shared_run / "model.onnx", settings=SessionSettings(graph_optimization_level="extended"),
                   optimized_output=tmp_path / "fp32.onnx")  # fmt: skip
    assert (cpu / "model.fp32.onnx").read_bytes() == (tmp_path / "fp32.onnx").read_bytes()
    # fp16: onnxruntime's converter on a full in-memory model, saved by onnx
    spec16 = load_target("cuda").fp16
    assert spec16 is not None
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(spec16.op_block_list))
    stock = convert_float_to_float16(_full_model(shared_run), keep_io_types=True, op_block_list=block,
                                     disable_shape_infer=True)  # fmt: skip
    onnx.save_model(stock, str(tmp_path / "fp16.onnx"))
    assert (cuda / "model.fp16.onnx").read_bytes() == (tmp_path / "fp16.onnx").read_bytes()
    assert (cuda / "triton" / "tiny-vgg" / "1" / "model.onnx").read_bytes() == (tmp_path / "fp16.onnx").read_bytes()
    # int8: the quantizer on a full in-memory model, with the bundle's own calibration images
    spec8 = load_target("cpu-x86_64").quantization
    assert spec8 is not None
    data = SharedInputs(shared_run).data(BundleConfig(calibration_images=photos), True, 64)
    assert data.calibration is not None
    quantized, _ = quantize_qdq(_full_model(shared_run), "input", data.calibration, spec8, dynamic_batch=True)
    onnx.save_model(quantized, str(tmp_path / "int8.onnx"))
    assert (cpu / "model.int8.onnx").read_bytes() == (tmp_path / "int8.onnx").read_bytes()
    # ORT format, now re-encoded from model.fp32.onnx: the same outputs as the one optimised from the run's model
    create_session(shared_run / "model.onnx", settings=SessionSettings(graph_optimization_level="extended"),
                   optimized_output=tmp_path / "before.ort")  # fmt: skip
    heldout = np.load(cpu / "fidelity" / "heldout.npz")["inputs"]
    before = create_session(tmp_path / "before.ort").run(None, {"input": heldout})[0]
    ort = create_session(cpu / "model.fp32.ort").run(None, {"input": heldout})[0]
    np.testing.assert_array_equal(ort, before)


def _models(bundle: Path) -> dict[str, bytes]:
    """The bundle's models and data, byte for byte (an .ort file by its outputs: onnxruntime's flatbuffer
    writer does not give the same bytes twice for the same model)."""
    files = {
        p.relative_to(bundle).as_posix(): p.read_bytes()
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.suffix in (".onnx", ".data", ".npz", ".npy")
    }
    for ort in bundle.glob("*.ort"):
        heldout = np.load(bundle / "fidelity" / "heldout.npz")["inputs"]
        files[ort.name] = create_session(ort).run(None, {"input": heldout})[0].tobytes()
    return files


def _figures(bundle: Path) -> list[dict[str, object]]:
    return [m["fidelity"] for m in json.loads((bundle / "manifest.json").read_text())["models"]]


def test_one_call_gives_the_bundles_separate_calls_give(shared_run: Path, photos: Path, tmp_path: Path) -> None:
    alone = tmp_path / "run"
    shutil.copytree(shared_run, alone, ignore=shutil.ignore_patterns("bundles"))
    for target in TARGETS:  # one call per target: nothing shared between them
        api.bundle(alone, [target], calibration_images=photos)
    for target in TARGETS:
        ours, theirs = shared_run / "bundles" / target, alone / "bundles" / target
        assert _models(ours) == _models(theirs), target
        assert _figures(ours) == _figures(theirs), target
        # every file is listed with its digest (computed while writing or in the background)
        listed = json.loads((ours / "manifest.json").read_text())["files"]
        on_disk = {p.relative_to(ours).as_posix() for p in ours.rglob("*") if p.is_file()} - set(BUNDLE_UNLISTED)
        assert set(listed) == on_disk
    assert api.verify(shared_run / "bundles" / "cpu-x86_64").status == "passed"
