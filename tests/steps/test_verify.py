"""Verify proves it can fail: perturbed weights, swapped channels, baked branches, degenerate outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_pipeline.config import ModelConfig, Tolerances, VerifyConfig
from onnx_pipeline.errors import InputError, VerificationError
from onnx_pipeline.pipeline import VerifyRequest, run_verify
from onnx_pipeline.steps.verify import compare_output
from tests.helpers import CONTROL_FLOW, TESTS

TINY = ModelConfig(model="tiny-vgg", weights="random", seed=0)


def _verify_file(path: Path, model: ModelConfig = TINY, **verify: object) -> object:
    return run_verify(VerifyRequest(path=path, model=model, verify=VerifyConfig(**verify)))  # type: ignore[arg-type]


def test_the_exported_file_passes_against_its_model(tiny_run: Path) -> None:
    report = _verify_file(tiny_run / "model.onnx")
    assert report.status == "passed"


def test_verify_run_folder_with_photographs(tiny_run: Path, photos: Path) -> None:
    report = run_verify(VerifyRequest(path=tiny_run, verify=VerifyConfig(images=photos)))
    samples = report.steps["verify"]["samples"]
    count = len([p for p in photos.iterdir() if p.is_file()])
    assert any(s["origin"] == "images" and s["shape"][0] == count for s in samples)
    assert report.steps["hashes"]["problems"] == []


def test_one_perturbed_weight_is_caught(tiny_run: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_run / "model.onnx"))
    last_weight = [i for i in model.graph.initializer if len(i.dims) == 2][-1]
    array = numpy_helper.to_array(last_weight).copy()
    array.flat[0] += 0.05
    last_weight.CopyFrom(numpy_helper.from_array(array, last_weight.name))
    onnx.save(model, str(tmp_path / "perturbed.onnx"))
    with pytest.raises(VerificationError) as info:
        _verify_file(tmp_path / "perturbed.onnx")
    output = info.value.result.steps["verify"]["outputs"][0]
    assert output["passed"] is False and output["max_abs_error"] > 1e-3


def test_swapped_input_channels_are_caught(tiny_run: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_run / "model.onnx"))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr_order"))
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == "input":
                node.input[i] = "input_bgr"
    graph.node.insert(0, helper.make_node("Gather", ["input", "bgr_order"], ["input_bgr"], axis=1))
    onnx.save(model, str(tmp_path / "bgr.onnx"))
    with pytest.raises(VerificationError, match="verification FAILED"):
        _verify_file(tmp_path / "bgr.onnx")


def test_a_baked_branch_is_caught(tmp_path: Path) -> None:
    import torch

    from tests.models.control_flow import build

    path = tmp_path / "baked.onnx"
    with pytest.warns(torch.jit.TracerWarning):
        torch.onnx.export(
            build().eval(),
            (torch.ones(2, 10),),
            str(path),
            dynamo=False,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    model = ModelConfig(model=CONTROL_FLOW, weights="random", input_shape=(1, 10))
    with pytest.raises(VerificationError) as info:
        _verify_file(path, model)
    per_set = info.value.result.steps["verify"]["outputs"][0]["per_sample_set_max_abs"]
    assert max(per_set.values()) > 1.0, per_set


def test_a_baked_batch_size_is_caught(tiny_run: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_run / "model.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(tmp_path / "batch1.onnx"))
    # The file declares batch 1: verify runs batch 1 only. Lying about a dynamic axis is caught:
    request_model = ModelConfig(model="tiny-vgg", weights="random", input_shape=(1, 3, 64, 64))
    report = _verify_file(tmp_path / "batch1.onnx", request_model)
    assert all(s["shape"][0] == 1 for s in report.steps["verify"]["samples"])


def test_tampered_run_folder_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"model\.onnx does not match its sha256"):
        run_verify(VerifyRequest(path=copy))


@pytest.mark.parametrize(
    ("forward", "message"),
    [
        ("x.mean(dim=(2, 3)) * 1e-9", "near zero"),
        ("x[:, :1, 0, 0] * 0 + torch.arange(4.0)", "constant across inputs"),
    ],
    ids=["near-zero", "constant"],
)
def test_degenerate_outputs_do_not_pass(tmp_path: Path, forward: str, message: str) -> None:
    factory = tmp_path / "degenerate.py"
    factory.write_text(
        f"import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return {forward}\n"
        "def build():\n    return M()\n"
    )
    _export_plain(f"{factory}:build", tmp_path / "m.onnx", (1, 3, 8, 8))
    with pytest.raises(VerificationError, match=message):
        _verify_file(tmp_path / "m.onnx", ModelConfig(model=f"{factory}:build", input_shape=(1, 3, 8, 8)))


def _export_plain(factory: str, path: Path, shape: tuple[int, ...]) -> None:
    import torch

    from onnx_pipeline.sources import resolve_spec

    module = resolve_spec(factory).build().eval()
    torch.onnx.export(
        module,
        (torch.randn(2, *shape[1:]),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )


# --------------------------------------------------------------------------- the comparison itself


def _compare(ref: np.ndarray, act: np.ndarray, **tol: float) -> object:
    return compare_output("out", [ref], [act], ["set"], Tolerances(**tol), classification=True)


def test_scale_aware_tolerance_large_outputs() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 100)) * 1e8
    act = ref + rng.standard_normal((4, 100)) * 1e2  # 1e-6 of the output's range
    result = _compare(ref, act)
    assert result.passed, result.failures
    assert result.max_abs_error > 1.0  # an absolute-only check would have failed it


def test_scale_aware_tolerance_small_outputs_cannot_pass_on_atol() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 100)) * 1e-5
    act = ref + rng.standard_normal((4, 100)) * 1e-6  # 10% error: an atol of 1e-5 would pass it
    result = _compare(ref, act)
    assert not result.passed
    assert np.allclose(act, ref, atol=1e-5)  # ...which is what a plain allclose does


def test_smallest_passing_tolerances_are_exact() -> None:
    ref = np.array([[1.0, -2.0, 4.0, 0.5]])
    act = ref + np.array([[0.0, 0.0, 0.004, 0.0]])
    result = _compare(ref, act, rtol=0.0)
    assert result.smallest_passing_atol == pytest.approx(0.001)  # 0.004 / scale 4
    assert _compare(ref, act, atol=result.smallest_passing_atol, rtol=0.0, min_cosine=0.0).passed
    assert not _compare(ref, act, atol=result.smallest_passing_atol * 0.9, rtol=0.0, min_cosine=0.0).passed


def test_nan_positions_must_match() -> None:
    ref = np.array([[1.0, np.nan, 3.0], [-1.0, 2.0, 0.5]])
    same = _compare(ref, ref.copy())
    assert same.nonfinite_reference == 1 and same.nonfinite_mismatch == 0
    assert not same.passed and "not finite" in same.degenerate  # a NaN reference is never a pass
    finite = np.nan_to_num(ref, nan=2.0)
    act = finite.copy()
    act[1, 0] = np.inf
    moved = _compare(finite, act)
    assert moved.nonfinite_onnx == 1 and moved.nonfinite_mismatch == 1 and not moved.passed
    assert any("NaN/Inf positions differ" in f for f in moved.failures)


def test_near_ties_do_not_fail_top1_but_real_flips_do() -> None:
    ref = np.array([[5.0, 5.0 - 1e-7, 0.0, 1.0, 2.0, 3.0]])
    act = np.array([[5.0 - 1e-7, 5.0, 0.0, 1.0, 2.0, 3.0]])
    tie = _compare(ref, act)
    assert tie.top1_agreement == 0.0 and tie.top1_significant_mismatches == 0 and tie.passed
    flip = _compare(np.array([[5.0, 1.0, 0.0, 1.0, 2.0, 3.0]]), np.array([[1.0, 5.0, 0.0, 1.0, 2.0, 3.0]]))
    assert flip.top1_significant_mismatches == 1 and not flip.passed


def test_verify_needs_model_for_a_bare_file(tiny_run: Path) -> None:
    with pytest.raises(InputError, match="--model"):
        run_verify(VerifyRequest(path=tiny_run / "model.onnx"))


def test_manifest_written_by_export_records_the_verification(tiny_run: Path) -> None:
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["verification"]["tolerances"] == dict(Tolerances().__dict__)
    assert (TESTS / "models" / "control_flow.py").exists()
