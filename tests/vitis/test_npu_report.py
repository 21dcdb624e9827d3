"""The NPU operator report: NPU, CPU fallback (graph split) and CPU only (whole model), per flow's table."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest


def _spec(name: str = "ryzen-ai-xdna2", **changes: Any) -> Any:
    from onnx_pipeline.targets import load_target

    spec = load_target(name).npu
    assert spec is not None
    return dataclasses.replace(spec, **changes)


def _chain(middle: str | None = None, *, size: Any = 16, stride: int = 1, dynamic: bool = False) -> Any:
    """input → Conv → Relu [→ middle op] → Conv → Relu, shapes inferred (``dynamic``: H and W symbolic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, c, 3, 3)).astype(np.float32), f"w{i}")
        for i, c in enumerate((3, 8))
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["input", "w0"],
            ["c0"],
            name="conv0",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[stride, stride],
        ),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
    ]
    last = "r0"
    if middle:
        nodes.append(helper.make_node(middle, ["r0"], ["m"], name="middle"))
        last = "m"
    nodes += [
        helper.make_node("Conv", [last, "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["output"], name="relu1"),
    ]
    hw = ["h", "w"] if dynamic else [size, size]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, *hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def test_a_supported_chain_is_one_npu_subgraph() -> None:
    from onnx_pipeline.vitis.npu_report import build_npu_report

    report = build_npu_report(_chain(), _spec())
    s = report.summary()
    assert s["on_cpu"] == 0 and s["npu_subgraphs"] == 1 and not s["whole_model_on_cpu"]
    assert {n.rule for n in report.nodes if n.op_type == "Relu"} == {"activation.fused"}


@pytest.mark.parametrize("name", ["ryzen-ai-xdna2", "vitis-ai-vek385"])
def test_one_unsupported_op_splits_the_graph(name: str) -> None:
    from onnx_pipeline.vitis.npu_report import build_npu_report

    report = build_npu_report(_chain("Hardmax"), _spec(name))
    s = report.summary()
    assert [(n["name"], n["rule"]) for n in s["cpu_nodes"]] == [("middle", "unsupported_op")]
    assert s["npu_subgraphs"] == 2 and not s["whole_model_on_cpu"]
    assert [g["nodes"] for g in report.subgraphs] in (
        [["conv0", "relu0"], ["conv1", "relu1"]],
        [["conv1", "relu1"], ["conv0", "relu0"]],
    )
    assert "NPU subgraph 1" in report.to_markdown()


def test_the_same_op_depends_on_the_precision_column() -> None:
    from onnx_pipeline.vitis.npu_report import build_npu_report

    spec = _spec()
    assert build_npu_report(_chain("Sigmoid"), spec, "XINT8").summary()["on_cpu"] == 1  # no XINT8 Sigmoid
    assert build_npu_report(_chain("Sigmoid"), spec, "A8W8").summary()["on_cpu"] == 0


@pytest.mark.parametrize("name", ["ryzen-ai-xdna2", "vitis-ai-vek385"])
def test_a_dynamic_shape_puts_the_whole_model_on_the_cpu(name: str) -> None:
    from onnx_pipeline.vitis.npu_report import build_npu_report

    report = build_npu_report(_chain(dynamic=True), _spec(name))
    assert report.summary()["whole_model_on_cpu"]
    assert all(n.device == "CPU" and n.rule == "whole_model" for n in report.nodes)
    assert "shape.dynamic" in report.cpu_only[0] and report.subgraphs == ()
    assert "The whole model runs on the CPU" in report.to_markdown()


def test_a_control_flow_op_puts_the_whole_model_on_the_cpu() -> None:
    from onnx import TensorProto, helper

    from onnx_pipeline.vitis.npu_report import build_npu_report

    model = _chain()
    branch = helper.make_graph(
        [helper.make_node("Identity", ["output"], ["y"])],
        "b",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    model.graph.initializer.append(cond)
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    report = build_npu_report(model, _spec())
    assert report.summary()["whole_model_on_cpu"] and "model.control_flow" in report.cpu_only[0]
    assert report.summary()["on_npu"] == 0


def test_vaiml_shape_limits_and_gops_threshold() -> None:
    from onnx_pipeline.vitis.npu_report import build_npu_report

    vek385 = _spec("vitis-ai-vek385")
    report = build_npu_report(_chain(stride=3), vek385)  # INT8 Conv2D: stride width 1 or 2
    (conv0,) = [n for n in report.nodes if n.name == "conv0"]
    assert conv0.device == "CPU" and conv0.rule == "conv2d.int8.stride"
    assert build_npu_report(_chain(stride=3), _spec()).summary()["on_cpu"] == 0  # Ryzen AI's table has no limit
    # conv0 (3 → 8 channels) holds 3/11 of the GOPs: under a 60% threshold VAIML sends its subgraph to the CPU
    small = build_npu_report(_chain("Hardmax"), dataclasses.replace(vek385, threshold_gops_percent=60))
    assert [g["nodes"] for g in small.subgraphs] == [["conv1", "relu1"]]
    assert {n.name for n in small.nodes if n.rule == "subgraph.gops_threshold"} == {"conv0", "relu0"}
    capped = build_npu_report(_chain("Hardmax"), dataclasses.replace(vek385, max_npu_subgraphs=1))
    assert capped.summary()["npu_subgraphs"] == 1
    assert sum(n.rule == "subgraph.max_count" for n in capped.nodes) == 2
