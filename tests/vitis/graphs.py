"""Models for the Vitis AI tests: hand-built ONNX graphs (no torch) and small exported CNNs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.targets import DpuSpec


def vitis_target(dpu: DpuSpec, **fields: Any) -> Any:
    """The real vitis-ai-zcu102 profile with another DPU (and other fields) swapped in."""
    from onnx_pipeline.targets import load_target

    return dataclasses.replace(load_target("vitis-ai-zcu102"), dpu=dpu, **fields)


def _profile_dpu(board: str) -> DpuSpec:
    from onnx_pipeline.targets import load_target

    dpu = load_target(f"vitis-ai-{board}").dpu
    assert dpu is not None
    return dpu


def zcu102() -> DpuSpec:
    """DPUCZDX8G_ISA1_B4096 (stride 1..8), as hardware/vitis-ai-zcu102.toml defines it."""
    return _profile_dpu("zcu102")


def vck190() -> DpuSpec:
    """DPUCVDX8G_ISA3_C32B3 (stride 1..4, depthwise stride 1..4)."""
    return _profile_dpu("vck190")


def vek280() -> DpuSpec:
    """DPUCV2DX8G with UG1414's 256*kh*kw <= 13760 rule."""
    return _profile_dpu("vek280")


def conv_model(
    kernel: int = 3, stride: int = 1, softmax: bool = False, channels: int = 4, size: int = 20, opset: int = 17
) -> Any:
    """input → Conv(k, s) → Relu [→ Softmax over channels], static batch 1, built with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((channels, 3, kernel, kernel)).astype(np.float32) * 0.2
    b = rng.standard_normal(channels).astype(np.float32) * 0.1
    nodes = [
        helper.make_node(
            "Conv", ["input", "w", "b"], ["conv"], name="conv", kernel_shape=[kernel, kernel], strides=[stride, stride]
        ),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
    ]
    out = "relu"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["relu"], ["prob"], name="softmax", axis=1))
        out = "prob"
    osz = (size - kernel) // stride + 1
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, channels, osz, osz])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def branchy_model() -> Any:
    """Two conv branches at very different scales joined by Add and Concat, LeakyRelu(0.1), MaxPool, Gemm.

    Built so that MinMSE positions break the DPU rules (Add inputs far apart, Concat inputs unequal),
    forcing the refinement to move them.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = {
        "wa": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "ba": rng.standard_normal(8).astype(np.float32) * 0.1,
        "wb": rng.standard_normal((8, 3, 1, 1)).astype(np.float32) * 3.0,  # ~10x larger activations
        "bb": rng.standard_normal(8).astype(np.float32),
        "wd": rng.standard_normal((8, 3, 1, 1)).astype(np.float32) * 300.0,  # ~1000x larger activations
        "bd": rng.standard_normal(8).astype(np.float32),
        "wc": rng.standard_normal((8, 16, 3, 3)).astype(np.float32) * 0.1,
        "bc": rng.standard_normal(8).astype(np.float32) * 0.1,
        "wf": rng.standard_normal((10, 8 * 4 * 4)).astype(np.float32) * 0.1,
        "bf": rng.standard_normal(10).astype(np.float32) * 0.1,
        "shape": np.array([1, -1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["input", "wa", "ba"], ["a"], name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["a_relu"], name="relu_a"),
        helper.make_node("Conv", ["input", "wb", "bb"], ["b"], name="conv_b", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["input", "wd", "bd"], ["d"], name="conv_d", kernel_shape=[1, 1]),
        helper.make_node("Add", ["a_relu", "d"], ["sum"], name="add"),
        helper.make_node("Concat", ["a_relu", "b"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "wc", "bc"], ["c"], name="conv_c", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c"], ["c_act"], name="leaky", alpha=0.1),
        helper.make_node("Add", ["c_act", "sum"], ["mix"], name="add2"),
        helper.make_node("MaxPool", ["mix"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["pool", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def save(model: Any, path: Path) -> Path:
    """Save an in-memory model and return its path."""
    import onnx

    onnx.save(model, str(path))
    return path
