"""Vitis AI bundle: DPU profiles, power-of-two XINT8 rules, the DPU operator report, the bundle files."""

from __future__ import annotations

import json
import math
import py_compile
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx_pipeline.errors import BundleError, TargetError
from onnx_pipeline.files import sha256_file
from onnx_pipeline.targets.profiles import _parse_dpu_table as parse_dpu_table
from tests.helpers import build_artifact
from tests.vitis.graphs import branchy_model, conv_model, save, vck190, vek280, vitis_target, zcu102

BOARDS = (
    "vitis-ai-zcu102",
    "vitis-ai-zcu104",
    "vitis-ai-kv260",
    "vitis-ai-vck190",
    "vitis-ai-vek280",
    "vitis-ai-alveo-v70",
    "vitis-ai-alveo-u50",
    "vitis-ai-alveo-u280",
)


# --- profiles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BOARDS)
def test_vitis_profile_loads(name: str) -> None:
    from onnx_pipeline.targets import load_target

    target = load_target(name)
    spec = target.dpu
    assert target.artifacts == ("vitis-ai",)
    assert target.batch == "static" and target.opset.min == target.opset.max == 17
    assert spec.arch_json == f"/opt/vitis_ai/compiler/arch/{spec.family}/{spec.board}/arch.json"
    assert spec.name.startswith(spec.family) and spec.sources
    if spec.flow == "vitis-ai-ep":
        assert spec.vaip_config.endswith("vaip_config.json")
        assert target.execution_providers[0].name == "VitisAIExecutionProvider"


def test_dpu_names_match_ug1414() -> None:
    from onnx_pipeline.targets import load_target

    names = {b: load_target(b).dpu.name for b in BOARDS}
    assert {names[b] for b in BOARDS[:3]} == {"DPUCZDX8G_ISA1_B4096"}
    assert names["vitis-ai-vck190"] == "DPUCVDX8G_ISA3_C32B3"
    assert names["vitis-ai-vek280"] == names["vitis-ai-alveo-v70"] == "DPUCV2DX8G_ISA1_C20B1"
    assert names["vitis-ai-alveo-u50"] == names["vitis-ai-alveo-u280"] == "DPUCAHX8H_ISA2_DWC"


def test_dpu_table_refuses_unknown_key(tmp_path: Path) -> None:
    table = {
        "name": "DPUCZDX8G_ISA1_B4096",
        "family": "DPUCZDX8G",
        "board": "ZCU102",
        "flow": "vai_c_xir",
        "channel_parallel": 16,
        "bank_depth": 2048,
        "conv_strides": [1, 8],
    }
    source = tmp_path / "mine.toml"
    with pytest.raises(TargetError) as info:
        parse_dpu_table(table, source)
    assert "dpu.conv_strides" in str(info.value) and str(source) in str(info.value)
    del table["conv_strides"]
    spec = parse_dpu_table(table, source)
    assert spec.arch_json == "/opt/vitis_ai/compiler/arch/DPUCZDX8G/ZCU102/arch.json"
    with pytest.raises(TargetError, match=r"dpu\.conv_stride"):
        parse_dpu_table({**table, "conv_stride": [0, 8]}, source)
    with pytest.raises(TargetError, match="vaip_config"):
        parse_dpu_table({**table, "flow": "vitis-ai-ep"}, source)


# --- the DPU operator report ------------------------------------------------------------------------


def _placements(model, spec):  # type: ignore[no-untyped-def]
    from onnx_pipeline.vitis.dpu_report import build_dpu_report
    from onnx_pipeline.vitis.graph import ModelParts, infer_shapes

    parts = ModelParts(skeleton=model, weights={})
    infer_shapes(parts)
    return {n.name: n for n in build_dpu_report(parts.skeleton, spec).nodes}


def test_report_kernel_17_on_cpu() -> None:
    placed = _placements(conv_model(kernel=17, size=20), zcu102())
    assert placed["conv"].device == "CPU" and placed["conv"].rule == "conv2d.kernel_size"
    assert _placements(conv_model(kernel=16, size=20), zcu102())["conv"].device == "DPU"


def test_report_stride_5_depends_on_dpu() -> None:
    model = conv_model(kernel=5, stride=5, size=20)
    assert _placements(model, zcu102())["conv"].device == "DPU"
    on_vck = _placements(conv_model(kernel=5, stride=5, size=20), vck190())["conv"]
    assert on_vck.device == "CPU" and on_vck.rule == "conv2d.stride" and "DPUCVDX8G" in on_vck.detail


def test_report_kernel_area_rule_on_dpucv2dx8g() -> None:
    too_big = _placements(conv_model(kernel=8, size=20), vek280())["conv"]  # 256*8*8 = 16384 > 13760
    assert too_big.device == "CPU" and too_big.rule == "conv2d.kernel_area" and "13760" in too_big.detail
    assert _placements(conv_model(kernel=7, size=20), vek280())["conv"].device == "DPU"  # 12544
    assert _placements(conv_model(kernel=8, size=20), zcu102())["conv"].device == "DPU"


def test_report_softmax_on_cpu() -> None:
    placed = _placements(conv_model(softmax=True), zcu102())
    assert placed["softmax"].device == "CPU" and placed["softmax"].rule == "softmax.cpu"
    assert placed["relu"].rule == "activation.fused"


# --- the quantized model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def branchy_bundle(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("branchy")
    model = save(branchy_model(), root / "model.onnx")
    rng = np.random.default_rng(3)
    calibration = rng.uniform(-1, 1, (8, 3, 8, 8)).astype(np.float32)
    heldout = rng.uniform(-1, 1, (6, 3, 8, 8)).astype(np.float32)
    target = vitis_target(zcu102())
    artifacts = build_artifact(model, target, "vitis-ai", calibration, heldout, root / "bundle")
    return root / "bundle", artifacts


def _load(path: Path):  # type: ignore[no-untyped-def]
    import onnx

    return onnx.load(str(path))


def test_qdq_scales_are_powers_of_two_with_zero_point_0(branchy_bundle) -> None:  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    model = _load(branchy_bundle[0] / "model_xint8_qdq.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 10
    for node in qdq:
        scale = float(inits[node.input[1]])
        mantissa, _ = math.frexp(scale)
        assert mantissa == 0.5, f"{node.name}: scale {scale} is not a power of two"
        assert inits[node.input[2]].dtype == np.int8 and int(inits[node.input[2]]) == 0


def test_qdq_pairs_share_scale_and_weights_in_range(branchy_bundle) -> None:  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    model = _load(branchy_bundle[0] / "model_xint8_qdq.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        (dq,) = consumers[q.output[0]]
        assert dq.op_type == "DequantizeLinear"
        assert float(inits[dq.input[1]]) == float(inits[q.input[1]])
    weight_inputs = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    checked = 0
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in weight_inputs):
        values = inits[dq.input[0]]
        assert values.dtype == np.int8 and values.min() >= -127 and values.max() <= 127
        checked += 1
    assert checked == 5


def test_no_qdq_between_conv_and_relu(branchy_bundle) -> None:  # type: ignore[no-untyped-def]
    model = _load(branchy_bundle[0] / "model_xint8_qdq.onnx")
    producer = {t: n for n in model.graph.node for t in n.output}
    relus = [n for n in model.graph.node if n.op_type in ("Relu", "LeakyRelu")]
    assert relus
    for relu in relus:
        assert producer[relu.input[0]].op_type == "Conv", f"{relu.name} is not fed by its Conv directly"


def test_static_opset17_checker_sorted(branchy_bundle) -> None:  # type: ignore[no-untyped-def]
    import onnx

    for file in ("model_fp32.onnx", "model_xint8_qdq.onnx"):
        path = branchy_bundle[0] / file
        onnx.checker.check_model(str(path), full_check=True)
        model = _load(path)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
        assert all(n.domain == "" for n in model.graph.node)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == [1, 3, 8, 8]
        seen = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
        for node in model.graph.node:
            assert all(t in seen for t in node.input), f"{node.name} is out of topological order"
            seen.update(node.output)


def test_shift_and_position_constraints(branchy_bundle) -> None:  # type: ignore[no-untyped-def]
    from onnx_pipeline.vitis.quantize import check_xint8

    bundle, artifacts = branchy_bundle
    model = _load(bundle / "model_xint8_qdq.onnx")
    assert check_xint8(model) == []
    params = json.loads((bundle / "quant_params.json").read_text())["tensors"]
    pos = {k: v["position"] for k, v in params.items()}
    assert abs(pos["a_relu"] - pos["d"]) <= 7  # Add inputs
    assert pos["cat"] == pos["a_relu"] == pos["b"]  # Concat in and out
    assert pos["pool"] == pos["mix"]  # MaxPool in and out
    for conv, x, w, b, o in (("conv_a", "input", "wa", "ba", "a_relu"), ("conv_c", "cat", "wc", "bc", "c_act")):
        shift_cut = pos[w] + pos[x] - pos[o]
        assert 0 <= shift_cut <= 16, conv
        shift_bias = pos[w] + pos[x] - pos[b]
        low = 0 if conv == "conv_c" else min(0, -(24 - (8 + shift_cut)))  # LeakyRelu after conv_c
        assert low <= shift_bias <= 15, conv
    # the model was built to need moves: they are recorded
    assert artifacts.section["quant_params"]["adjustments"]
    assert any("shift_read" in a for a in artifacts.section["quant_params"]["adjustments"])


def test_check_xint8_catches_a_broken_model(branchy_bundle) -> None:  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    from onnx_pipeline.vitis.quantize import check_xint8

    model = _load(branchy_bundle[0] / "model_xint8_qdq.onnx")
    for init in model.graph.initializer:
        if init.name == "a_relu_scale":
            init.CopyFrom(numpy_helper.from_array(np.array(0.3, dtype=np.float32), init.name))
    problems = check_xint8(model)
    assert any("not a power of 2" in p for p in problems)


def test_leaky_relu_alpha_is_dpu_fixed_point(branchy_bundle) -> None:  # type: ignore[no-untyped-def]
    from onnx import helper

    model = _load(branchy_bundle[0] / "model_xint8_qdq.onnx")
    (leaky,) = [n for n in model.graph.node if n.op_type == "LeakyRelu"]
    alpha = helper.get_attribute_value(leaky.attribute[0])
    assert alpha == pytest.approx(26 / 256)


def options_cache_in_tmp(bundle: Path) -> bool:
    options = json.loads((bundle / "provider_options.json").read_text())["provider_options"]
    return str(options["cache_dir"]).startswith("/tmp")


def test_bundle_files(branchy_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, _ = branchy_bundle
    for name in (
        "model_fp32.onnx",
        "model_xint8_qdq.onnx",
        "quant_params.json",
        "dpu_report.json",
        "dpu_report.md",
        "fidelity.json",
        "calibration/manifest.json",
        "calibration/samples.npy",
        "preprocess.json",
        "provider_options.json",
        "run_on_board.py",
        "quark_requantize.py",
        "VITIS_AI_NOTES.md",
    ):
        assert (bundle / name).is_file(), name
    assert not (bundle / "manifest.json").exists()
    # the compile cache is the bundle's own, never a shared, predictable /tmp folder
    assert not options_cache_in_tmp(bundle)
    options = json.loads((bundle / "provider_options.json").read_text())
    assert options["provider"] == "VitisAIExecutionProvider"
    assert options["provider_options"]["cache_key"] == sha256_file(bundle / "model_xint8_qdq.onnx")
    assert options["provider_options"]["config_file"].endswith("vaip_config.json")
    assert json.loads((bundle / "calibration/manifest.json").read_text())["synthetic"] is True
    notes = (bundle / "VITIS_AI_NOTES.md").read_text()
    assert "vai_c_xir -x" in notes and "-a /opt/vitis_ai/compiler/arch/DPUCZDX8G/ZCU102/arch.json" in notes
    for script in ("run_on_board.py", "quark_requantize.py"):
        py_compile.compile(str(bundle / script), cfile=str(tmp_path / f"{script}c"), doraise=True)
    quark = (bundle / "quark_requantize.py").read_text()
    assert "deepcopy" in quark and "topological_sort" in quark and "XINT8" in quark
    fidelity = json.loads((bundle / "fidelity.json").read_text())
    (out,) = fidelity["outputs"]
    assert {"sqnr_db", "min_cosine", "top1_agreement", "top5_agreement", "max_abs_error"} <= set(out)


def test_runner_fails_loudly_without_vitis_provider(branchy_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    config = tmp_path / "vaip_config.json"
    config.write_text("{}")
    run = subprocess.run(
        [sys.executable, str(branchy_bundle[0] / "run_on_board.py"), str(image), "--config-file", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "VitisAIExecutionProvider" in run.stderr and "Traceback" not in run.stderr


def test_fidelity_threshold_failure_raises_with_figures(tmp_path: Path) -> None:
    from onnx_pipeline.targets import FidelityThresholds

    model = save(branchy_model(), tmp_path / "model.onnx")
    rng = np.random.default_rng(4)
    data = rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    strict = FidelityThresholds(min_cosine=1.0, min_sqnr_db=200.0, min_top1_agreement=1.0, min_top5_agreement=1.0)
    target = vitis_target(zcu102(), fidelity={"int8": strict})
    with pytest.raises(BundleError) as info:
        build_artifact(model, target, "vitis-ai", data, data, tmp_path / "bundle")
    assert "SQNR" in str(info.value)
    assert info.value.result is not None and info.value.result["fidelity_float_vs_xint8"]["passed"] is False


def test_histogram_minmse_prefers_clipping_outliers() -> None:
    from onnx_pipeline.vitis.quantize import Histogram, no_overflow_position

    values = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)
    values[0] = 40.0  # one outlier sets the no-overflow position
    hist = Histogram()
    hist.add(values[:1000])
    hist.add(values[1000:])  # the range grows: bins are merged
    best, p0, errors = hist.best_position()
    assert p0 == no_overflow_position(40.0, 127) == 1
    assert best > p0 and errors[best] < errors[p0]
    assert hist.counts.sum() == values.size


def test_rounding_is_half_to_even() -> None:
    from onnx_pipeline.vitis.quantize import quantize_array

    q = quantize_array(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 200.0], dtype=np.float32), 0, -127, 127)
    assert q.tolist() == [0, 2, 2, 0, -2, 127]


def test_opset_13_model_is_upgraded_and_reduce_mean_becomes_global_pool(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from onnx_pipeline.vitis.graph import load_parts, to_static_opset17

    old = save(conv_model(opset=13), tmp_path / "old.onnx")
    parts = load_parts(old)
    notes = to_static_opset17(parts)
    assert [(o.domain, o.version) for o in parts.skeleton.opset_import] == [("", 17)]
    assert any("opset 13" in n for n in notes)

    base = conv_model(opset=18, size=10)  # 8x8 after the conv: within the 8x8 average-pooling limit
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    base.graph.initializer.append(axes)
    base.graph.node.append(helper.make_node("ReduceMean", ["relu", "axes"], ["pooled"], name="gap", keepdims=0))
    del base.graph.output[:]
    base.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4]))
    parts = load_parts(save(base, tmp_path / "new.onnx"))
    to_static_opset17(parts)
    ops = [n.op_type for n in parts.skeleton.graph.node]
    assert "ReduceMean" not in ops and "GlobalAveragePool" in ops and ops[-1] == "Flatten"
    assert _placements(parts.skeleton, zcu102())["gap"].device == "DPU"
