"""The bundle step: each target's bundle builds from a tiny run folder, verifies, and its checks can fail."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnx_pipeline.artifacts.triton import check_config, parse_pbtxt
from onnx_pipeline.bundling.fidelity import judge, output_figures
from onnx_pipeline.config import BundleConfig
from onnx_pipeline.errors import BundleError, InputError, OutputExistsError
from onnx_pipeline.files import sha256_file, to_jsonable
from onnx_pipeline.manifest import BUNDLE_UNLISTED, content_digest
from onnx_pipeline.steps.bundle import BundleResult, build_bundle
from onnx_pipeline.steps.verify_bundle import verify_bundle
from onnx_pipeline.targets import FidelityThresholds, load_target
from tests.helpers import HARDWARE, make_run_folder

MY_TARGETS = ("cpu-x86_64", "cpu-arm64", "cuda", "tensorrt")
EXPECTED_FILES = {
    "fp32-optimized": ["model.fp32.onnx"],
    "ort": ["model.fp32.ort", "required_operators.config"],
    "int8-qdq": ["model.int8.onnx"],
    "fp16": ["model.fp16.onnx"],
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of the tiny model at 32×32 (smaller and faster than the conftest's exported small_run)."""
    return make_run_folder(tmp_path_factory.mktemp("small") / "run")


@pytest.fixture(scope="module")
def bundles(small_run: Path, photos: Path) -> dict[str, BundleResult]:
    """Each of the four targets built once from the tiny run folder, calibrated on photographs."""
    config = BundleConfig(calibration_images=photos)
    return {name: build_bundle(small_run, load_target(name), config) for name in MY_TARGETS}


def _copy_bundle(result: BundleResult, tmp_path: Path) -> Path:
    copy = tmp_path / result.bundle_dir.name
    shutil.copytree(result.bundle_dir, copy)
    return copy


def _profile(tmp_path: Path, base: str, edits: dict[str, str], name: str = "custom") -> Path:
    """A user profile: a built-in one with text replacements, renamed."""
    text = load_target(base).source.read_text(encoding="utf-8")
    text = re.sub(r'^name = ".*"$', f'name = "{name}"', text, count=1, flags=re.M)
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- building and verifying -------------------------------------------------------------------


@pytest.mark.parametrize("name", MY_TARGETS)
def test_bundle_builds_and_verifies(bundles: dict[str, BundleResult], name: str) -> None:
    result = bundles[name]
    target = load_target(name)
    assert result.passed and result.bundle_dir.is_dir()
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    for kind in target.artifacts:
        for file in EXPECTED_FILES.get(kind, []):
            assert (result.bundle_dir / file).is_file(), file
    assert (result.bundle_dir / "README.md").is_file()
    assert manifest["schema"] == "onnx-pipeline/bundle/2"
    assert manifest["target"]["name"] == name
    assert [e["name"] for e in manifest["execution_providers"]] == [ep.name for ep in target.execution_providers]
    assert manifest["inputs"][0]["name"] == "input" and manifest["labels"][0] == "class_0"
    assert manifest["preprocessing"]["crop"] == [32, 32]
    assert {"onnx", "onnxruntime", "numpy", "python", "onnx-pipeline"} <= set(manifest["versions"])
    assert manifest["default_model"] in {m["file"] for m in manifest["models"]}
    for entry in manifest["models"]:
        assert entry["fidelity"]["passed"] and entry["fidelity"]["outputs"][0]["samples"] >= 2
        assert entry["fidelity"]["provider"] == "CPUExecutionProvider"
    verified = verify_bundle(result.bundle_dir)
    assert verified.passed and verified.files_checked == len(manifest["files"])
    json.dumps(to_jsonable(result), allow_nan=False), json.dumps(to_jsonable(verified), allow_nan=False)
    json.dumps(manifest, allow_nan=False)  # strict JSON, readable on any device
    assert result.summary.startswith("passed") and "SQNR" in result.summary
    assert not verified.unlisted_files
    assert {r.model for r in verified.models} == {m["file"] for m in manifest["models"]}


@pytest.mark.parametrize("name", MY_TARGETS)
def test_manifest_hashes_every_file(bundles: dict[str, BundleResult], name: str) -> None:
    root = bundles[name].bundle_dir
    manifest = json.loads((root / "manifest.json").read_text())
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - set(BUNDLE_UNLISTED)
    assert set(manifest["files"]) == on_disk
    for rel, digest in manifest["files"].items():
        assert sha256_file(root / rel) == digest


def test_cpu_bundle_contents(bundles: dict[str, BundleResult]) -> None:
    root = bundles["cpu-x86_64"].bundle_dir
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["calibration"]["synthetic"] is False
    held, used = set(manifest["heldout"]["images"]), set(manifest["calibration"]["images"])
    assert held and used and not held & used, "held-out photos must not be used for calibration"
    assert (
        manifest["artifacts"]["int8-qdq"]["per_channel"] is True
        and manifest["artifacts"]["int8-qdq"]["reduce_range"] is True
    )
    assert manifest["target"]["offline_optimization"] == "extended"
    levels = {m["file"]: m["optimization_level"] for m in manifest["models"]}
    assert levels["model.fp32.onnx"] == "extended"
    config = (root / "required_operators.config").read_text()
    assert "ai.onnx;" in config and str(root.parent) not in config
    import onnx

    int8 = onnx.load(str(root / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # per-channel: the Conv weights' DequantizeLinear carries one scale per output channel
    inits = {i.name: i for i in int8.graph.initializer}
    scales = [inits[n.input[1]] for n in int8.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)


def test_fp16_bundle_keeps_fp32_io(bundles: dict[str, BundleResult]) -> None:
    import onnx
    import onnxruntime as ort

    root = bundles["cuda"].bundle_dir
    model = onnx.load(str(root / "model.fp16.onnx"))
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [1, 1]
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    session = ort.InferenceSession(str(root / "model.fp16.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert out.dtype == np.float32 and out.shape == (2, 10)
    trt = json.loads((bundles["tensorrt"].bundle_dir / "manifest.json").read_text())
    options = dict((e["name"], e["options"]) for e in trt["execution_providers"])
    assert options["TensorrtExecutionProvider"]["trt_fp16_enable"] == "1"


def test_fp16_io_check_can_fail(small_run: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from onnx_pipeline.artifacts.fp16 import check_io_float32

    model = onnx.load(str(small_run / "model.onnx"))
    with pytest.raises(BundleError, match="inputs/outputs"):
        check_io_float32(model, convert_float_to_float16(onnx.load(str(small_run / "model.onnx")), keep_io_types=False))


def test_synthetic_calibration_is_marked(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("bundles"))
    result = build_bundle(run, load_target("cpu-arm64"), BundleConfig())
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert manifest["calibration"]["synthetic"] is True and "SYNTHETIC" in manifest["calibration"]["warning"]
    assert manifest["heldout"]["synthetic"] is True
    assert "SYNTHETIC" in (result.bundle_dir / "README.md").read_text()
    with pytest.raises(OutputExistsError):
        build_bundle(run, load_target("cpu-arm64"), BundleConfig())
    assert build_bundle(run, load_target("cpu-arm64"), BundleConfig(force=True)).passed


def test_fast_quantization_matches_stock_flow(small_run: Path, photos: Path, tmp_path: Path) -> None:
    """The batched min/max calibration feeds the same quantizer: same model as quantize_static's."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from onnx_pipeline.artifacts.int8_qdq import _ArrayReader, quantize_qdq
    from onnx_pipeline.imagespec import PreprocessSpec
    from onnx_pipeline.onnxfile import infer_shapes
    from onnx_pipeline.runtime.preprocess import list_images, load_batch

    manifest = json.loads((small_run / "manifest.json").read_text())
    data = load_batch(list_images(photos), PreprocessSpec.from_dict(manifest["preprocessing"]))
    spec = load_target("cpu-x86_64").quantization
    assert spec is not None
    model = onnx.load(str(small_run / "model.onnx"))
    infer_shapes(model)
    assert len(model.graph.value_info) >= 10, "shape inference on the weightless copy must reach the model"
    fast, _ = quantize_qdq(model, "input", data[:8], spec, dynamic_batch=True)
    quantize_static(
        str(small_run / "model.onnx"),
        str(tmp_path / "stock.onnx"),
        _ArrayReader("input", data[:8]),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    cpu = ["CPUExecutionProvider"]
    ours = ort.InferenceSession(fast.SerializeToString(), providers=cpu).run(None, {"input": data[8:]})[0]
    stock = ort.InferenceSession(str(tmp_path / "stock.onnx"), providers=cpu).run(None, {"input": data[8:]})[0]
    np.testing.assert_array_equal(ours, stock)


# --- checks that must be able to fail -----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("missing", "model.int8.onnx is missing"),
        ("truncated", "model.int8.onnx does not match"),
        ("flipped", "model.int8.onnx does not match"),
        ("readme", "README.md does not match"),
    ],
)
def test_tampered_bundle_refused(bundles: dict[str, BundleResult], tmp_path: Path, change: str, expected: str) -> None:
    root = _copy_bundle(bundles["cpu-x86_64"], tmp_path)
    model = root / "model.int8.onnx"
    if change == "missing":
        model.unlink()
    elif change == "truncated":
        model.write_bytes(model.read_bytes()[:-100])
    elif change == "flipped":
        raw = bytearray(model.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        model.write_bytes(bytes(raw))
    else:
        (root / "README.md").write_text("# hacked\n")
    with pytest.raises(BundleError, match=expected):
        verify_bundle(root)


def test_verify_without_manifest_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        verify_bundle(tmp_path)


def test_verify_reruns_fidelity(bundles: dict[str, BundleResult], tmp_path: Path) -> None:
    """A perturbed model with a matching hash is still caught by the re-run fidelity check."""
    import onnx
    from onnx import numpy_helper

    root = _copy_bundle(bundles["cpu-x86_64"], tmp_path)
    model = onnx.load(str(root / "model.fp32.onnx"))
    gemm = [n for n in model.graph.node if n.op_type in ("Gemm", "FusedGemm", "MatMul")][-1]
    inits = {i.name: i for i in model.graph.initializer}
    weight = inits[gemm.input[1]]
    rng = np.random.default_rng(0)
    array = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(rng.permutation(array.ravel()).reshape(array.shape), weight.name))
    onnx.save(model, str(root / "model.fp32.onnx"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["model.fp32.onnx"] = sha256_file(root / "model.fp32.onnx")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="edited after it was written"):  # a careless edit is caught first
        verify_bundle(root)
    manifest["content_sha256"] = content_digest(manifest)  # a forger rewrites every hash: fidelity still fails
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="fidelity") as info:
        verify_bundle(root)
    result = info.value.result
    assert result is not None and not result.passed
    bad = next(r for r in result.models if r.model == "model.fp32.onnx")
    assert bad.failures and bad.outputs[0].min_cosine < 0.9999
    assert all(r.passed for r in result.models if r.model != "model.fp32.onnx")


def test_fidelity_failure_raises_with_figures(small_run: Path, photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("bundles"))
    profile = _profile(tmp_path, "cpu-x86_64", {"min_sqnr_db = 15.0": "min_sqnr_db = 400.0"}, name="impossible")
    with pytest.raises(BundleError) as info:
        build_bundle(run, load_target(profile), BundleConfig(calibration_images=photos))
    result = info.value.result
    assert isinstance(result, BundleResult) and not result.passed
    assert "SQNR" in str(info.value) and "model.int8.onnx" in str(info.value)
    int8 = next(m for m in result.models if m.kind == "int8-qdq")
    assert int8.fidelity.outputs[0].sqnr_db < 400.0 and int8.fidelity.failures
    assert not (run / "bundles" / "impossible").exists(), "a failed bundle must leave nothing behind"
    assert not any(p.name.startswith(".impossible") for p in (run / "bundles").iterdir())


def test_opset_outside_target_range(small_run: Path, tmp_path: Path) -> None:
    profile = _profile(tmp_path, "cuda", {"max = 23": "max = 17"})
    with pytest.raises(BundleError, match=r"opset 18.*--opset 17"):
        build_bundle(small_run, load_target(profile), BundleConfig())


def test_calibration_sample_limit(small_run: Path, photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("bundles"))
    profile = _profile(tmp_path, "cpu-arm64", {"max_calibration_samples = 64": "max_calibration_samples = 3"})
    result = build_bundle(run, load_target(profile), BundleConfig(calibration_images=photos))
    assert result.calibration is not None and result.calibration["samples"] == 3
    assert len(result.calibration["images"]) == 3


def test_calibration_needs_two_images(
    small_run: Path, photos: Path, tmp_path: Path, bundles: dict[str, BundleResult]
) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(photos.iterdir())[0], one)
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("bundles"))
    with pytest.raises(InputError, match="at least 2"):
        build_bundle(run, load_target("cpu-x86_64"), BundleConfig(calibration_images=one))
    assert not (run / "bundles" / "cpu-x86_64").exists()
    # an existing bundle is refused before any work, unless forced
    with pytest.raises(OutputExistsError):
        build_bundle(small_run, load_target("cpu-x86_64"), BundleConfig(calibration_images=one))


VITIS_PROFILES = sorted(p.stem for p in HARDWARE.glob("vitis-ai-*.toml"))


@pytest.mark.skipif(not VITIS_PROFILES, reason="no Vitis AI profile in hardware/")
def test_vitis_artifact_is_dispatched(small_run: Path, photos: Path, tmp_path: Path) -> None:
    """A target whose artifacts list "vitis-ai" gets the Vitis AI builder's files, hashed and verified."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("bundles"))
    target = load_target(VITIS_PROFILES[0])
    result = build_bundle(run, target, BundleConfig(calibration_images=photos))
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert [m["kind"] for m in manifest["models"]] == ["vitis-ai"]
    assert manifest["artifacts"]["vitis-ai"]["dpu"]["name"] == target.dpu.name
    assert manifest["default_model"] == manifest["models"][0]["file"]
    assert verify_bundle(result.bundle_dir).passed


# --- Triton ---------------------------------------------------------------------------------------


def test_triton_config_matches_model(bundles: dict[str, BundleResult]) -> None:
    import onnx

    root = bundles["tensorrt"].bundle_dir
    triton = bundles["tensorrt"].artifacts["triton"]
    assert triton is not None
    text = (root / triton["config"]).read_text()
    config = parse_pbtxt(text)
    assert config["platform"] == ["onnxruntime_onnx"] and config["max_batch_size"] == [8]
    assert config["input"][0]["dims"] == [3, 32, 32] and config["input"][0]["data_type"] == ["TYPE_FP32"]
    assert config["output"][0]["dims"] == [10]
    assert config["dynamic_batching"][0]["preferred_batch_size"] == [4, 8]
    accel = config["optimization"][0]["execution_accelerators"][0]["gpu_execution_accelerator"][0]
    assert accel["name"] == ["tensorrt"]
    params = {p["key"][0]: p["value"][0] for p in accel["parameters"]}
    assert params["precision_mode"] == "FP16"
    model = onnx.load(str(root / triton["model"]))
    assert (root / triton["model"]).read_bytes() == (root / "model.fp16.onnx").read_bytes()
    assert check_config(text, model, model_name=triton["model_name"])["max_batch_size"] == 8
    assert "optimization" not in parse_pbtxt((bundles["cuda"].bundle_dir / triton["config"]).read_text())


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("dims: [ 3, 32, 32 ]", "dims: [ 3, 64, 64 ]", "dims"),
        ("dims: [ 10 ]", "dims: [ -1, 10 ]", "dims"),
        ("data_type: TYPE_FP32", "data_type: TYPE_FP16", "data_type"),
        ('name: "input"', 'name: "images"', "input names"),
        ('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"', "platform"),
        ("max_batch_size: 8", "max_batch_size: 0", "dims"),
        ("dims: [ 10 ]\n  }\n]", "dims: [ 10 ]\n  }", "not valid protobuf"),
    ],
)
def test_triton_mismatch_detected(bundles: dict[str, BundleResult], old: str, new: str, message: str) -> None:
    import onnx

    root = bundles["tensorrt"].bundle_dir
    triton = bundles["tensorrt"].artifacts["triton"]
    assert triton is not None
    text = (root / triton["config"]).read_text()
    assert old in text
    model = onnx.load(str(root / triton["model"]))
    with pytest.raises(BundleError, match=message):
        check_config(text.replace(old, new, 1), model, model_name=triton["model_name"])


def test_static_batch_triton(tmp_path: Path, photos: Path) -> None:
    run = make_run_folder(tmp_path / "static", dynamic_batch=False)
    with pytest.raises(BundleError, match="dynamic batch"):
        build_bundle(run, load_target("cuda"), BundleConfig())
    profile = _profile(tmp_path, "cuda", {'batch = "dynamic"': 'batch = "static"'}, name="cuda-static")
    result = build_bundle(run, load_target(profile), BundleConfig(calibration_images=photos))
    assert "triton" in result.artifacts and result.artifacts["triton"]["max_batch_size"] == 0
    config = parse_pbtxt((result.bundle_dir / result.artifacts["triton"]["config"]).read_text())
    assert config["max_batch_size"] == [0] and config["input"][0]["dims"] == [1, 3, 32, 32]
    assert "dynamic_batching" not in config
    assert verify_bundle(result.bundle_dir).passed


def test_static_target_fixes_a_dynamic_batch(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("bundles"))
    profile = _profile(tmp_path, "cpu-x86_64", {'batch = "dynamic"': 'batch = "static"'}, name="cpu-static")
    result = build_bundle(run, load_target(profile), BundleConfig())
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 3, 32, 32] and manifest["dynamic_batch"] is False
    import onnx

    dims = onnx.load(str(result.bundle_dir / "model.int8.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1
    assert verify_bundle(result.bundle_dir).passed


def test_pbtxt_parser() -> None:
    parsed = parse_pbtxt('a: 1 # comment\nb { c: "x" d: [1, 2] } b { c: "y" }\ne: TYPE_FP32 f: 2.5 g: true\nh < i: 3 >')
    assert parsed == {
        "a": [1],
        "b": [{"c": ["x"], "d": [1, 2]}, {"c": ["y"]}],
        "e": ["TYPE_FP32"],
        "f": [2.5],
        "g": [True],
        "h": [{"i": [3]}],
    }
    for bad in ("a: ", "b { c: 1", "a: 1 }", "a: @"):
        with pytest.raises(ValueError):
            parse_pbtxt(bad)


# --- fidelity figures -------------------------------------------------------------------------


def test_fidelity_figures() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 20)).astype(np.float32)
    same = output_figures("out", ref, ref)
    assert same.sqnr_db == float("inf") and same.min_cosine == pytest.approx(1.0) and same.top1_agreement == 1.0
    noisy = output_figures("out", ref, ref + 0.1 * rng.standard_normal(ref.shape).astype(np.float32))
    assert 15 < noisy.sqnr_db < 25 and noisy.min_cosine < 1.0
    flipped = output_figures("out", ref, -ref)
    assert flipped.top1_agreement_all == 0.0 and flipped.min_cosine == pytest.approx(-1.0)
    assert flipped.sqnr_db < 0
    broken = output_figures("out", ref, np.full_like(ref, np.nan))
    assert broken.sqnr_db == float("-inf") and broken.min_cosine == -1.0
    assert broken.top1_agreement == 0.0 and broken.top5_agreement == 0.0


def test_top1_is_judged_only_where_the_reference_decides() -> None:
    rng = np.random.default_rng(1)
    # Near-flat logits (random weights): noise far above every top-1 lead flips classes at random.
    flat = 1e-3 * rng.standard_normal((8, 1000))
    noisy = output_figures("out", flat, flat + 1e-2 * rng.standard_normal(flat.shape))
    assert noisy.decided_samples == 0 and noisy.top1_agreement is None and noisy.top1_agreement_all < 0.5
    thresholds = FidelityThresholds(min_cosine=-1.0, min_sqnr_db=-100.0, min_top1_agreement=1.0, min_top5_agreement=1.0)
    assert judge("m", "int8", ["out"], [flat], [flat], thresholds, "test").passed
    # Clear winners (trained-model-like): a flip is a real failure and is judged.
    clear = rng.standard_normal((8, 1000))
    clear[np.arange(8), np.arange(8)] += 20.0
    swapped = clear.copy()
    swapped[0, 0], swapped[0, 1] = clear[0, 1], clear[0, 0]
    figures = output_figures("out", clear, swapped)
    assert figures.decided_samples == 8 and figures.top1_agreement == pytest.approx(7 / 8)
    result = judge("m", "int8", ["out"], [clear], [swapped], thresholds, "test")
    assert not result.passed and any("top-1 agreement" in f for f in result.failures)


def test_a_lead_within_the_noise_between_two_classes_is_not_judged() -> None:
    """A faithful lowering (errors of RMS 0.05) flips a sample whose lead, 0.106, is 2.1 RMS but only
    1.5 sigma of the difference of two classes' errors: not decided; one with a lead of 8 RMS is."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((2, 1000))
    for i, lead in enumerate((0.106, 0.4)):
        ref[i, 0] = ref[i].max() + 1.0
        ref[i, 1] = ref[i, 0] - lead
    noise = 0.05 * rng.standard_normal(ref.shape)
    noise[:, 0], noise[:, 1] = -0.06, 0.06  # within the noise: flips the first sample, not the second
    out = ref + noise
    assert np.argmax(out[0]) == 1 and np.argmax(out[1]) == 0
    figures = output_figures("out", ref, out)
    assert figures.decided_samples == 1 and figures.top1_agreement == 1.0 and figures.top1_agreement_all == 0.5


# --- GPU and VGG16 ----------------------------------------------------------------------------


def _cuda_available() -> bool:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


@pytest.mark.gpu
def test_cuda_bundle_runs_on_cuda(bundles: dict[str, BundleResult]) -> None:
    if not _cuda_available():
        pytest.skip("needs onnxruntime's CUDAExecutionProvider and an NVIDIA GPU")
    import onnxruntime as ort

    root = bundles["cuda"].bundle_dir
    manifest = json.loads((root / "manifest.json").read_text())
    providers = [(e["name"], e["options"]) for e in manifest["execution_providers"]]
    session = ort.InferenceSession(str(root / "model.fp16.onnx"), providers=providers)
    assert session.get_providers()[0] == "CUDAExecutionProvider", "fell back to the CPU"
    with np.load(root / "fidelity" / "heldout.npz") as stored:
        out = session.run(None, {"input": stored["inputs"]})[0]
        reference = stored["reference_0"]
    assert output_figures("output", reference, out).min_cosine > 0.999


@pytest.mark.slow
def test_vgg16_cpu_bundle_int8_fidelity(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> None:
    """VGG16 (random weights, seeded): the CPU bundle's int8 model agrees with fp32 on real photographs."""
    import torch
    import torchvision

    torch.manual_seed(0)
    run = make_run_folder(tmp_path_factory.mktemp("vgg16") / "run", size=224, module=torchvision.models.vgg16().eval())
    result = build_bundle(run, load_target("cpu-x86_64"), BundleConfig(calibration_images=photos))
    int8: Any = next(m for m in result.models if m.kind == "int8-qdq").fidelity
    thresholds = load_target("cpu-x86_64").fidelity["int8"]
    figures = int8.outputs[0]
    assert int8.passed and figures.samples >= 3
    assert figures.top1_agreement >= thresholds.min_top1_agreement and figures.min_cosine >= thresholds.min_cosine
    assert result.calibration is not None and result.calibration["synthetic"] is False
    assert verify_bundle(result.bundle_dir).passed
