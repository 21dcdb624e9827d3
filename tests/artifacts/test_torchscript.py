"""The torchscript target: model.pt judged against eager PyTorch, re-checked by verify, the seed's ControlFlowModel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from onnx_pipeline import api
from onnx_pipeline.errors import BundleError, InputError
from onnx_pipeline.files import sha256_file
from onnx_pipeline.manifest import BundleManifest
from tests.helpers import CONTROL_FLOW, assert_user_error, invoke, rewrite_manifest


def _jit_load(path: Path):
    import torch

    from onnx_pipeline.tracing import quiet_jit

    with quiet_jit():
        return torch.jit.load(str(path))


@pytest.fixture(scope="module")
def control_flow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's ControlFlowModel exported with a torchscript bundle (export runs the factory: the user named it)."""
    run = tmp_path_factory.mktemp("control-flow") / "run"
    api.export(CONTROL_FLOW, weights="random", output=run, targets=["torchscript"])
    return run


def test_tiny_vgg_bundle_verifies(torch_bundles: Path) -> None:
    bundle = torch_bundles / "bundles" / "torchscript"
    manifest = BundleManifest.read(bundle)
    (model,) = manifest.models
    assert (model.file, model.format, model.precision) == ("model.pt", "torchscript", "fp32")
    assert model.fidelity is not None and model.fidelity["passed"]
    section = manifest.artifacts["torchscript"]
    assert (
        section["method"] == "trace"
        and "eager" in section["fidelity_against"]
        and section["against_run_model"][0]["min_cosine"] > 0.9999
    )
    assert (bundle / "labels.txt").read_text(encoding="utf-8").splitlines() == list(manifest.labels or ())
    assert {"cpp/CMakeLists.txt", "cpp/classify.cpp", "cpp/README.md", "model.pt"} <= set(manifest.files)
    report = api.verify(bundle)
    (checked,) = report.steps["bundle"]["models"]
    assert report.status == "passed" and checked["provider"] == "torch.jit (CPU)"
    assert checked["data"] == f"{manifest.heldout['samples']} held-out images"  # type: ignore[index]


def test_model_pt_with_one_weight_changed_fails_verify(torch_bundles: Path, tmp_path: Path) -> None:
    import torch

    from onnx_pipeline.tracing import quiet_jit

    bundle = tmp_path / "torchscript"
    shutil.copytree(torch_bundles / "bundles" / "torchscript", bundle)
    module = _jit_load(bundle / "model.pt")
    weight = next(p for name, p in module.named_parameters() if name.endswith("weight"))
    with torch.no_grad():
        weight.view(-1)[0] += 1.0
    with quiet_jit():
        torch.jit.save(module, str(bundle / "model.pt"))
    assert_user_error(invoke("verify", bundle), "model.pt", code=1)  # its sha256 no longer matches
    # A forger who re-records the hash still meets the held-out inputs and the stored reference outputs.
    rewrite_manifest(bundle, lambda data: data["files"].update({"model.pt": sha256_file(bundle / "model.pt")}))
    with pytest.raises(BundleError, match=r"fails its fidelity check: model\.pt") as info:
        api.verify(bundle)
    assert info.value.result is not None


def test_control_flow_model_is_scripted_and_right_for_both_signs(control_flow_run: Path) -> None:
    import torch

    from tests.models.control_flow import build

    bundle = control_flow_run / "bundles" / "torchscript"
    manifest = BundleManifest.read(bundle)
    assert manifest.artifacts["torchscript"]["method"] == "script"
    assert api.verify(bundle).status == "passed"
    inputs = np.load(bundle / "fidelity" / "heldout.npz")["inputs"]
    signs = np.sign(inputs.reshape(len(inputs), -1).sum(axis=1))
    assert {-1.0, 1.0} <= set(signs.tolist()), "the held-out inputs take both branches"
    scripted, eager = _jit_load(bundle / "model.pt"), build().eval()
    for sample in torch.from_numpy(inputs):
        x = sample[None]
        for value in (x, -x):
            expected = value if value.sum() > 0 else -value
            assert torch.equal(scripted(value), expected) and torch.equal(eager(value), expected)


def test_a_trace_that_bakes_the_branch_fails_the_bundle(
    control_flow_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from onnx_pipeline import tracing

    def trace_anyway(module, example, *, script=False):
        with tracing.quiet_jit():
            return tracing.TorchScriptModule(torch.jit.trace(module, (example,)), "trace", "traced regardless")

    run = tmp_path / "run"
    shutil.copytree(control_flow_run, run, ignore=shutil.ignore_patterns("bundles"))
    monkeypatch.setattr(tracing, "to_torchscript", trace_anyway)
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(BundleError, match=r"model\.pt") as info:
        api.bundle(run, ["torchscript"], trust_source=True)
    assert "torchscript" in info.value.result.steps["bundles"]  # the figures travel with the error
    assert not (run / "bundles" / "torchscript").exists()


def test_bundle_from_a_factory_needs_trust_source(control_flow_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(control_flow_run, run, ignore=shutil.ignore_patterns("bundles"))
    assert_user_error(invoke("bundle", run, "-t", "torchscript"), "--trust-source", "control_flow.py")
    assert not (run / "bundles" / "torchscript").exists()
    result = invoke("bundle", run, "-t", "torchscript", "--trust-source")
    assert result.exit_code == 0, result.output
    assert BundleManifest.read(run / "bundles" / "torchscript").artifacts["torchscript"]["method"] == "script"


def test_predict_refuses_a_torchscript_bundle(torch_bundles: Path, photos: Path) -> None:
    photo = sorted(photos.iterdir())[0]
    assert_user_error(invoke("predict", torch_bundles / "bundles" / "torchscript", photo), "README.md", "torchscript")


def test_preprocess_writes_the_bundles_input(torch_bundles: Path, photos: Path, tmp_path: Path) -> None:
    from onnx_pipeline.runtime import Bundle
    from onnx_pipeline.runtime.tensorfile import read_tensor

    photo = sorted(photos.iterdir())[1]
    result = invoke("preprocess", photo, torch_bundles / "bundles" / "torchscript", "-o", tmp_path / "x.bin")
    assert result.exit_code == 0, result.output
    tensor = read_tensor(tmp_path / "x.bin")
    expected = Bundle.load(torch_bundles).preprocess(photo)[None]
    assert tensor.dtype == np.float32 and np.array_equal(tensor, expected)
    scripted = _jit_load(torch_bundles / "bundles" / "torchscript" / "model.pt")
    assert np.argmax(scripted(__import__("torch").from_numpy(tensor)).detach().numpy()) == int(
        np.argmax(Bundle.load(torch_bundles).run(expected))
    )
    assert_user_error(invoke("preprocess", tmp_path / "x.bin", torch_bundles, "-o", tmp_path / "y.bin"), "x.bin")
    assert not (tmp_path / "y.bin").exists()


def test_tensor_file_format() -> None:
    from onnx_pipeline.runtime.tensorfile import decode_tensor, encode_tensor

    array = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    data = encode_tensor(array)
    assert data[:8] == b"OPTENSOR" and len(data) == 24 + 8 * 4 + 4 * 24
    assert json.dumps(decode_tensor(data).tolist()) == json.dumps(array.astype(np.float32).tolist())
    for bad, message in ((data[:-4], "data bytes"), (b"NOTATENS" + data[8:], "OPTENSOR"), (data[:10], "too short")):
        with pytest.raises(InputError, match=message):
            decode_tensor(bad)
