"""The bulk fp16 conversion writes the very model onnxruntime's converter writes, in a fraction of the time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import export_onnx, tiny_module
from onnx import TensorProto, helper, numpy_helper

from onnx_pipeline.artifacts.fp16 import cast_to_fp16, convert_fp16
from onnx_pipeline.onnxfile import infer_shapes, load_parts, write_model
from onnx_pipeline.targets import load_target


def _stock(model: onnx.ModelProto, block: list[str]) -> onnx.ModelProto:
    """What the fp16 builder did before: the converter on a full copy of the model."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    work = onnx.ModelProto()
    work.CopyFrom(model)
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(block))
    return convert_float_to_float16(work, keep_io_types=True, op_block_list=blocked, disable_shape_infer=True)


def test_cast_matches_the_converters_clamping_bit_for_bit() -> None:
    from onnxruntime.transformers.float16 import convert_np_to_float16

    rng = np.random.default_rng(0)
    edges = np.array(
        [0.0, -0.0, 1e-9, -1e-9, 5.96e-08, 6e-08, -6e-08, 3e-08, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 7e4,
         np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-5, 6.1e-05],
        dtype=np.float32,
    )  # fmt: skip
    values = np.concatenate([edges, (rng.standard_normal(4_999_979) * 10.0 ** rng.integers(-9, 6, 4_999_979))])
    values = values.astype(np.float32).reshape(-1, 1000)  # over one chunk: the threaded path runs
    ours, theirs = cast_to_fp16(values), convert_np_to_float16(values)
    assert ours.dtype == np.float16 and ours.shape == values.shape
    assert np.array_equal(ours.view(np.uint16), theirs.view(np.uint16))


def test_tiny_vgg_converts_to_the_stock_converters_file(tmp_path: Path) -> None:
    path = export_onnx(tiny_module(), tmp_path / "model.onnx")
    spec = load_target("cuda").fp16
    assert spec is not None
    model = onnx.load(str(path))
    infer_shapes(model)
    onnx.save_model(_stock(model, list(spec.op_block_list)), str(tmp_path / "stock.onnx"))
    parts = load_parts(path)
    infer_shapes(parts.skeleton)
    converted = convert_fp16(parts, spec)
    write_model(converted.skeleton, tmp_path / "ours.onnx", weights=converted.weights)
    assert (tmp_path / "ours.onnx").read_bytes() == (tmp_path / "stock.onnx").read_bytes()


def _shared_weight_model(scale: float = 1e5) -> onnx.ModelProto:
    """A weight used by a converted MatMul and a blocked Add, a weight only blocked ops use (``scale``: beyond
    fp16's range by default), a Constant."""
    rng = np.random.default_rng(1)
    shared = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "shared")
    only_fp32 = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) * scale, "only_fp32")
    nodes = [
        helper.make_node("MatMul", ["x", "shared"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "shared"], ["a"], name="add_blocked"),
        helper.make_node("Sub", ["a", "only_fp32"], ["s"], name="sub_blocked"),
        helper.make_node("Constant", [], ["c"], name="const", value=numpy_helper.from_array(np.float32([0.5]))),
        helper.make_node("Mul", ["s", "c"], ["y"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
        [shared, only_fp32],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    infer_shapes(model)
    return model


def test_blocked_consumers_of_weights_get_the_stock_casts_and_shapes(tmp_path: Path) -> None:
    from onnx_pipeline.targets import Fp16Spec

    model = _shared_weight_model()
    spec = Fp16Spec(keep_io_types=True, op_block_list=("Add", "Sub"))
    onnx.save_model(_stock(model, ["Add", "Sub"]), str(tmp_path / "stock.onnx"))
    converted = convert_fp16(model, spec)
    write_model(converted.skeleton, tmp_path / "ours.onnx", weights=converted.weights)
    assert (tmp_path / "ours.onnx").read_bytes() == (tmp_path / "stock.onnx").read_bytes()
    ours = onnx.load(str(tmp_path / "ours.onnx"))
    types = {t.name: t.data_type for t in ours.graph.initializer}
    assert types == {"shared": TensorProto.FLOAT16, "only_fp32": TensorProto.FLOAT}
    cast = next(v for v in ours.graph.value_info if v.name == "shared_cast_to_fp32")
    assert [d.dim_value for d in cast.type.tensor_type.shape.dim] == [64, 64]


@pytest.mark.parametrize("block", [("Add",), ()])
def test_the_fp16_model_runs_with_float32_io(tmp_path: Path, block: tuple[str, ...]) -> None:
    from onnx_pipeline.runtime.session import create_session
    from onnx_pipeline.targets import Fp16Spec

    model = _shared_weight_model(scale=1.0)
    converted = convert_fp16(model, Fp16Spec(keep_io_types=True, op_block_list=block))
    write_model(converted.skeleton, tmp_path / "m.onnx", weights=converted.weights)
    x = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
    (y,) = create_session(tmp_path / "m.onnx").run(None, {"x": x})
    (reference,) = create_session(model.SerializeToString()).run(None, {"x": x})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, reference, rtol=2e-2, atol=abs(reference).max() * 2e-3)
