"""Hardware targets: every profile loads, bad profiles are refused with the key and file named."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_pipeline.artifacts import available_kinds, builders_for
from onnx_pipeline.errors import TargetError
from onnx_pipeline.targets import (
    HardwareTarget,
    hardware_dirs,
    list_targets,
    load_target,
)
from tests.helpers import HARDWARE

CHECKOUT_HARDWARE = HARDWARE
PROFILES = sorted(CHECKOUT_HARDWARE.glob("*.toml"))

MINIMAL = """
name = "mine"
precisions = ["fp32"]
artifacts = ["fp32-optimized"]

[[execution_providers]]
name = "CPUExecutionProvider"

[opset]
min = 13
max = 23

[fidelity.fp32]
min_cosine = 0.9999
min_sqnr_db = 60.0
min_top1_agreement = 1.0
min_top5_agreement = 1.0
"""


def _write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_loads(path: Path) -> None:
    target = load_target(path)
    assert isinstance(target, HardwareTarget)
    assert target.name == path.stem, "a profile's name must match its file name (it names the bundle folder)"
    assert set(target.artifacts) <= set(available_kinds())
    builders = builders_for(target)  # each kind has its builder, and the profile gives what each builder needs
    if not all(b.SPEC.torch_module for b in builders):
        assert target.execution_providers, "a target with onnxruntime models runs on at least one provider"
    for precision in target.precisions:
        assert precision in target.fidelity
    assert load_target(path.stem) == target  # by name too


def test_required_targets_exist() -> None:
    names = {t.name for t in list_targets()}
    assert {"cpu-x86_64", "cpu-arm64", "cuda", "tensorrt"} <= names
    assert len(PROFILES) >= 4


def test_reduce_range_decided_per_profile() -> None:
    x86 = load_target("cpu-x86_64").quantization
    arm = load_target("cpu-arm64").quantization
    assert x86 is not None and arm is not None
    # x86-64 without VNNI saturates in U8S8 (VPMADDUBSW): 7-bit weights; ARM does not need it
    assert x86.reduce_range and (x86.activation_type, x86.weight_type) == ("uint8", "int8")
    assert not arm.reduce_range and arm.weight_type == "int8"
    assert x86.per_channel and arm.per_channel


def test_gpu_profiles_have_provider_options() -> None:
    trt = dict(load_target("tensorrt").providers)
    assert next(iter(trt)) == "TensorrtExecutionProvider"
    options = trt["TensorrtExecutionProvider"]
    assert options["trt_fp16_enable"] == "1" and options["trt_engine_cache_enable"] == "1"
    assert options["trt_engine_cache_path"]
    cuda = load_target("cuda")
    assert cuda.providers[0][0] == "CUDAExecutionProvider"
    assert cuda.fp16 is not None and "Softmax" in cuda.fp16.op_block_list


def test_user_profile_path(tmp_path: Path) -> None:
    target = load_target(str(_write(tmp_path, MINIMAL)))
    assert target.name == "mine" and target.artifacts == ("fp32-optimized",)
    assert target.providers == [("CPUExecutionProvider", {})]
    assert target.batch == "dynamic" and 18 in target.opset and 24 not in target.opset


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda t: t + "\ncolour = 'red'\n", "colour"),
        (lambda t: t.replace("min = 13", "min = 13\nminn = 14"), "opset.minn"),
        (lambda t: t.replace('name = "CPUExecutionProvider"', 'name = "CPUExecutionProvider"\nopts = {}'), "opts"),
        (lambda t: t.replace("min_top5_agreement = 1.0", "min_top5_agreement = 1.0\nmax_error = 1"), "max_error"),
        (lambda t: t + "\n[quantization]\nper_chanel = true\n", "quantization.per_chanel"),
        (lambda t: t + "\n[fallback]\nmax_float_layers = 2\n", "fallback.max_float_layers"),
    ],
)
def test_unknown_key_refused(tmp_path: Path, edit, named: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, edit(MINIMAL))
    with pytest.raises(TargetError) as info:
        load_target(path)
    assert named in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('artifacts = ["fp32-optimized"]', 'artifacts = ["gguf"]'), "unknown artifact kind 'gguf'"),
        (lambda t: t.replace('artifacts = ["fp32-optimized"]', 'artifacts = ["int8-qdq"]'), "int8"),
        (lambda t: t.replace("min_cosine = 0.9999", 'min_cosine = "high"'), "min_cosine"),
        (lambda t: t.replace("max = 23", "max = 12"), "opset"),
        (lambda t: t.replace('name = "mine"', 'name = "../escape"'), "name"),
        (lambda t: t.replace('name = "mine"', 'name = "."'), "name"),
        (lambda t: t.replace('name = "mine"', 'name = ".."'), "name"),
        (lambda t: t.replace('name = "mine"', 'name = "a/b"'), "name"),
        (lambda t: t.replace('name = "mine"', 'name = ".hidden"'), "name"),
        (lambda t: t + '\nbatch = "sometimes"\n', "batch"),
        (lambda t: t.replace("[fidelity.fp32]", "[fidelity.fp16]"), "fidelity.fp32"),
        (lambda t: t.replace('name = "CPUExecutionProvider"', 'name = "CPU"'), "provider"),
        (lambda t: t + "\nname2 = [\n", "TOML"),
        (lambda t: t + "\n[fallback]\nmax_float_layers_fraction = 1.5\n", "between 0 and 1"),
        (lambda t: t + "\n[fallback]\nmax_float_layers_fraction = true\n", "max_float_layers_fraction"),
    ],
)
def test_invalid_profile_refused(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TargetError, match=message):
        builders_for(load_target(_write(tmp_path, edit(MINIMAL))))  # profile rules, then the builders' own


@pytest.mark.parametrize(("artifact", "table"), [("int8-qdq", "quantization"), ("vitis-ai", "dpu")])
def test_artifact_needs_its_table(tmp_path: Path, artifact: str, table: str) -> None:
    text = MINIMAL.replace('precisions = ["fp32"]', 'precisions = ["fp32", "int8"]')
    text = text.replace('artifacts = ["fp32-optimized"]', f'artifacts = ["fp32-optimized", "{artifact}"]')
    text += (
        "\n[fidelity.int8]\nmin_cosine = 0.9\nmin_sqnr_db = 10.0\nmin_top1_agreement = 0.5\nmin_top5_agreement = 0.5\n"
    )
    with pytest.raises(TargetError, match=rf"{artifact}.*\[{table}\]"):
        builders_for(load_target(_write(tmp_path, text)))
    if table == "quantization":
        assert load_target(_write(tmp_path, text + "\n[quantization]\nreduce_range = true\n")).quantization


def test_unknown_name_lists_known_targets() -> None:
    with pytest.raises(TargetError, match="cpu-x86_64"):
        load_target("no-such-target")
    with pytest.raises(TargetError, match="does not exist"):
        load_target("missing-profile.toml")


def test_installed_hardware_folder_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a wheel, hardware/ is onnx_pipeline/hardware/: it is found before (and without) a checkout."""
    package = tmp_path / "onnx_pipeline"
    (package / "hardware").mkdir(parents=True)
    _write(package / "hardware", MINIMAL, "mine.toml")
    import importlib.resources

    monkeypatch.setattr(importlib.resources, "files", lambda name: package)
    dirs = hardware_dirs()
    assert dirs[0] == package / "hardware"
    assert load_target("mine").source == package / "hardware" / "mine.toml"


def test_dpu_table_is_parsed_with_the_target(tmp_path: Path) -> None:
    text = (
        MINIMAL + '\n[dpu]\nname = "DPUCZDX8G_ISA1_B4096"\nfamily = "DPUCZDX8G"\nboard = "ZCU102"\nflow = "vai_c_xir"\n'
    )
    text += "channel_parallel = 16\nbank_depth = 2048\n"
    target = load_target(_write(tmp_path, text))
    assert target.dpu is not None and target.dpu.board == "ZCU102" and target.table("dpu") is target.dpu
    with pytest.raises(TargetError, match=r"dpu\.bad"):
        load_target(_write(tmp_path, text + "bad = 1\n"))
    assert load_target(_write(tmp_path, MINIMAL)).dpu is None


def test_pipeline_defaults() -> None:
    assert load_target("cpu-x86_64").pipeline_defaults() == {"export": {"dynamic_batch": True}}


def test_fallback_budget_defaults_and_reads(tmp_path: Path) -> None:
    assert load_target(_write(tmp_path, MINIMAL)).fallback.max_float_layers_fraction == 0.1
    path = _write(tmp_path, MINIMAL + "\n[fallback]\nmax_float_layers_fraction = 0\n")
    assert load_target(path).fallback.max_float_layers_fraction == 0.0
    assert all(t.fallback.max_float_layers_fraction == 0.1 for t in list_targets() if t.dpu or t.quantization)


def test_onnxruntime_artifacts_need_execution_providers(tmp_path: Path) -> None:
    start, end = MINIMAL.index("[[execution_providers]]"), MINIMAL.index("[opset]")
    no_providers = MINIMAL[:start] + MINIMAL[end:]
    with pytest.raises(TargetError, match="execution_providers"):
        builders_for(load_target(_write(tmp_path, no_providers)))
    torch_only = no_providers.replace('artifacts = ["fp32-optimized"]', 'artifacts = ["torchscript"]')
    assert [b.SPEC.kind for b in builders_for(load_target(_write(tmp_path, torch_only, "ts.toml")))] == ["torchscript"]


def test_torchserve_table_is_validated(tmp_path: Path) -> None:
    served = MINIMAL.replace('artifacts = ["fp32-optimized"]', 'artifacts = ["torchscript", "torchserve"]')
    with pytest.raises(TargetError, match=r"needs a \[torchserve\] table"):
        builders_for(load_target(_write(tmp_path, served)))
    table = "\n[torchserve]\nbatch_size = 4\ninference_port = 9000\n"
    target = load_target(_write(tmp_path, served + table, "ok.toml"))
    assert target.torchserve is not None and (target.torchserve.batch_size, target.torchserve.inference_port) == (
        4,
        9000,
    )
    for bad, message in (
        ("batch_size = 0", "batch_size"),
        ("metrics_port = 8080", "must differ"),
        ("workers = 2", "unknown"),
    ):
        with pytest.raises(TargetError, match=message):
            load_target(_write(tmp_path, served + f"\n[torchserve]\n{bad}\n", "bad.toml"))
