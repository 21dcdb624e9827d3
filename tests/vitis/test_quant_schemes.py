"""VINT8, A8W8 and A16W8 (and XINT8) models satisfy their format's rules, and the checker catches breaks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.vitis.graphs import branchy_model, save

SCHEMES = ("XINT8", "VINT8", "A8W8", "A16W8")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The branchy model quantized in every scheme: name → (loaded model, result)."""
    import onnx

    from onnx_pipeline.vitis.graph import load_parts, to_static_opset17
    from onnx_pipeline.vitis.quantize import quantize
    from onnx_pipeline.vitis.scheme import scheme

    tmp = tmp_path_factory.mktemp("schemes")
    source = save(branchy_model(), tmp / "branchy.onnx")
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    heldout = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    out = {}
    for name in SCHEMES:
        parts = load_parts(source)
        to_static_opset17(parts)
        result = quantize(parts, calibration, heldout, tmp / f"{name}.onnx", scheme=scheme(name), scratch_dir=tmp)
        out[name] = (onnx.load(str(tmp / f"{name}.onnx")), result, tmp / f"{name}.onnx", heldout)
    return out


def _qdq(model: Any) -> list[tuple[Any, float, int, int]]:
    """(node, scale, zero point, zero-point ONNX type) of every Q/DQ node."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[n.input[2]]
            scale = float(numpy_helper.to_array(inits[n.input[1]]))
            out.append((n, scale, int(numpy_helper.to_array(zp)), zp.data_type))
    return out


@pytest.mark.parametrize("name", SCHEMES)
def test_each_scheme_passes_its_own_checker_and_onnx_checker(quantized: dict[str, Any], name: str) -> None:
    import onnx

    from onnx_pipeline.vitis.quantize import check_qdq
    from onnx_pipeline.vitis.scheme import scheme

    model, _, path, _ = quantized[name]
    onnx.checker.check_model(str(path), full_check=True)
    assert check_qdq(model, scheme(name)) == []


def test_integer_types_and_zero_points(quantized: dict[str, Any]) -> None:
    from onnx import TensorProto

    for name, activation_type in (
        ("VINT8", TensorProto.INT8),
        ("A8W8", TensorProto.INT8),
        ("A16W8", TensorProto.INT16),
    ):
        entries = _qdq(quantized[name][0])
        assert all(zp == 0 for _, _, zp, _ in entries), name
        quants = [t for n, _, _, t in entries if n.op_type == "QuantizeLinear"]
        assert set(quants) == {activation_type}, name
    a16 = quantized["A16W8"][0]
    assert {n.domain for n, *_ in _qdq(a16) if n.op_type == "QuantizeLinear"} == {"com.microsoft"}
    bias_types = {t for n, _, _, t in _qdq(quantized["A8W8"][0]) if n.input[0] in ("bc_quantized", "ba_quantized")}
    assert bias_types == {TensorProto.INT32}
    assert {t for n, _, _, t in _qdq(quantized["VINT8"][0]) if n.input[0] == "bc_quantized"} == {TensorProto.INT8}


def test_scale_rules(quantized: dict[str, Any]) -> None:
    def pow2(s: float) -> bool:
        return math.frexp(s)[0] == 0.5

    for name in ("XINT8", "VINT8"):
        assert all(pow2(s) for _, s, _, _ in _qdq(quantized[name][0])), name
    for name in ("A8W8", "A16W8"):
        assert not all(pow2(s) for _, s, _, _ in _qdq(quantized[name][0])), f"{name} has float scales"
    params = quantized["A8W8"][1].params
    x, w, b = params["cat"], params["wc"], params["bc"]
    assert b.scale == pytest.approx(float(np.float32(x.scale) * np.float32(w.scale)), rel=1e-7)  # int32 bias
    assert params["a_relu"].scale == params["cat"].scale == params["b"].scale  # Concat aligned
    assert params["cat"].amax == pytest.approx(max(params["a_relu"].amax, params["b"].amax))
    assert params["a_relu"].scale == pytest.approx(params["a_relu"].amax / 127)
    a16 = quantized["A16W8"][1].params["cat"]
    assert a16.scale == pytest.approx(a16.amax / 32767) and a16.dtype == "int16"


def test_vint8_keeps_a_qdq_pair_between_conv_and_relu(quantized: dict[str, Any]) -> None:
    for name, expected in (("VINT8", True), ("XINT8", False), ("A8W8", False)):
        model = quantized[name][0]
        producer = {t: n for n in model.graph.node for t in n.output}
        (relu,) = [n for n in model.graph.node if n.op_type == "Relu"]
        dq = producer[relu.input[0]]
        assert (dq.op_type == "DequantizeLinear") is expected, name


def test_the_checker_catches_each_kind_of_break(quantized: dict[str, Any]) -> None:
    import onnx
    from onnx import numpy_helper

    from onnx_pipeline.vitis.quantize import check_qdq
    from onnx_pipeline.vitis.scheme import scheme

    def broken(name: str, tensor: str, value: np.ndarray) -> list[str]:
        model = onnx.ModelProto()
        model.CopyFrom(quantized[name][0])
        for init in model.graph.initializer:
            if init.name == tensor:
                init.CopyFrom(numpy_helper.from_array(value, tensor))
        return check_qdq(model, scheme(name))

    assert any("not a power of 2" in p for p in broken("VINT8", "a_relu_scale", np.array(0.3, np.float32)))
    assert any("zero point 3 is not 0" in p for p in broken("A8W8", "a_relu_zero_point", np.array(3, np.int8)))
    assert any("is int8, not int16" in p for p in broken("A16W8", "a_relu_zero_point", np.array(0, np.int8)))
    assert any("input x weight scale" in p for p in broken("A8W8", "bc_scale", np.array(1e-3, np.float32)))
    # each format's model breaks the others' rules
    for name in SCHEMES:
        for other in SCHEMES:
            if other != name:
                assert check_qdq(quantized[name][0], scheme(other)), f"{name} passes {other}'s rules"


@pytest.mark.parametrize("name", SCHEMES)
def test_outputs_stay_close_to_float(quantized: dict[str, Any], name: str) -> None:
    from onnx_pipeline.runtime.session import create_session

    _, result, path, heldout = quantized[name]
    session = create_session(Path(path))
    out = np.concatenate([session.run(None, {"input": x[None]})[0] for x in heldout])
    ref = result.reference_outputs["output"]
    cos = min(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(out, ref, strict=True))
    assert cos > {"A16W8": 0.9999, "A8W8": 0.999}.get(name, 0.998), (name, cos)
