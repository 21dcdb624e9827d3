"""Per-layer sensitivity on graphs built in code: the fragile layer ranks first; layers kept in float run."""

from __future__ import annotations

from typing import Any

import numpy as np

from onnx_pipeline.artifacts.base import run_batches
from onnx_pipeline.compare.keep_float import keep_in_float, match_layers
from onnx_pipeline.compare.sensitivity import LAYER_OPS, VariantRunner, analyse_sensitivity, output_figures
from onnx_pipeline.onnxfile import ModelParts, infer_shapes, split_model
from onnx_pipeline.runtime.session import create_session


def _conv_chain(outliers: bool, *, tiny_weights: bool = False) -> Any:
    """input → c1 → relu → c2 → c3 → relu → c4 → output (4 channels, 8×8); with ``outliers`` c2 writes one
    channel 1e4× larger and c3 reads it 1e4× smaller: c3 is the fragile layer (its input quantization).
    With ``tiny_weights`` c2 writes 1e3× larger values and c3's weights are 1e-7× (below fp16's normal
    range, where the converter clamps them): c3 is the fragile layer in fp16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32) for i in range(1, 5)}
    biases = {f"b{i}": rng.normal(0, 0.1, 4).astype(np.float32) for i in range(1, 5)}
    if outliers:
        weights["w2"][0] *= 1e4
        biases["b2"][0] *= 1e4
        weights["w3"][:, 0] *= 1e-4
    if tiny_weights:
        weights["w2"] *= 1e3
        biases["b2"] *= 1e3
        weights["w3"] *= 1e-7
    conv = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["t1"], name="c1", **conv),
        helper.make_node("Relu", ["t1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["t2"], name="c2", **conv),
        helper.make_node("Conv", ["t2", "w3", "b3"], ["t3"], name="c3", **conv),
        helper.make_node("Relu", ["t3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["output"], name="c4", **conv),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in {**weights, **biases}.items()]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    infer_shapes(model)
    return model


def _inputs() -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (8, 4, 8, 8)).astype(np.float32)


def _float_outputs(model: Any, inputs: np.ndarray) -> list[np.ndarray]:
    return run_batches(create_session(model.SerializeToString()), inputs)


def _int8(model: Any) -> ModelParts:
    from onnx_pipeline.artifacts.int8_qdq import quantize_qdq
    from onnx_pipeline.targets import QuantizationSpec

    quantized, _ = quantize_qdq(model, "input", _inputs(), QuantizationSpec(), dynamic_batch=True)
    return split_model(quantized)


def _rank(outliers: bool) -> list[str]:
    model = _conv_chain(outliers)
    inputs = _inputs()
    runner = VariantRunner(_int8(model), split_model(model), inputs, False, run_batches)
    result = analyse_sensitivity("int8", runner, _float_outputs(model, inputs), batches=[inputs], qdq_as_float=True)
    assert {x.layer for x in result.layers} == {"c1", "c2", "c3", "c4"}
    assert all(np.isfinite(x.sqnr_db) and -1.0 <= x.cosine <= 1.0 for x in result.layers)
    return result.ranked_names()


def test_the_fragile_layer_ranks_first() -> None:
    assert _rank(outliers=True)[0] == "c3"


def test_without_outliers_no_layer_is_singled_out_for_them() -> None:
    """The same chain without its outliers: the ranking is not fixed to c3 (the test above can fail)."""
    model = _conv_chain(False)
    inputs = _inputs()
    lowered = _int8(model)
    reference = split_model(model)
    fixed = keep_in_float(lowered, reference, ["c3"], half=False)
    plain = VariantRunner(lowered, reference, inputs, False, run_batches).outputs([])
    kept = VariantRunner(fixed, reference, inputs, False, run_batches).outputs([])
    truth = _float_outputs(model, inputs)
    # keeping c3 alone does not repair a model that had nothing to repair: the gain is small
    assert output_figures(truth, kept)[0] - output_figures(truth, plain)[0] < 10.0


def test_fp16_fragile_layer_ranks_first_and_float_repairs_it() -> None:
    from onnx_pipeline.artifacts.fp16 import convert_fp16
    from onnx_pipeline.targets import Fp16Spec

    model = _conv_chain(False, tiny_weights=True)
    inputs = _inputs()
    half = convert_fp16(model, Fp16Spec())
    reference = split_model(model)
    layers = [m.name for m in match_layers(model, half.skeleton, LAYER_OPS, half=True) if m.lowered]
    assert layers == ["c1", "c2", "c3", "c4"]
    runner = VariantRunner(half, reference, inputs, True, run_batches)
    truth = _float_outputs(model, inputs)
    result = analyse_sensitivity("fp16", runner, truth, batches=[inputs], qdq_as_float=False)
    assert result.ranked_names()[0] == "c3"
    best = result.layers[0]
    assert best.effect is not None and best.effect > 10.0 and best.output_sqnr_db is not None
    assert best.output_sqnr_db > result.output_sqnr_db + 10.0
