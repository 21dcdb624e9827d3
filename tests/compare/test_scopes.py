"""ONNX nodes to PyTorch modules: dynamo metadata, TorchScript scope names, one output tensor per module."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from onnx_pipeline.compare.scopes import module_tensors, node_module


def _node(name: str, scopes: str | None = None) -> onnx.NodeProto:
    node = helper.make_node("Relu", ["x"], ["y"], name=name)
    if scopes is not None:
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
    return node


def test_module_paths_from_both_exporters() -> None:
    assert node_module(_node("n", "['', 'layer1', 'layer1.0', 'layer1.0.bn1', 'batch_norm']")) == "layer1.0.bn1"
    assert node_module(_node("n", "['', 'add']")) is None  # the root module's own op
    assert node_module(_node("/features/features.19/Conv")) == "features.19"
    assert node_module(_node("/layer1/layer1.0/conv1/Conv")) == "layer1.0.conv1"
    assert node_module(_node("node_Conv_0")) is None


def test_every_layer_of_the_tiny_export_maps_to_its_module(tiny_run: Path) -> None:
    model = onnx.load(str(tiny_run / "model.onnx"), load_external_data=False)
    mapped = module_tensors(model.graph)
    assert [m.module for m in mapped] == [str(i) for i in range(14) if i != 12]  # 12 is Dropout: no node
    assert [m.order for m in mapped] == sorted(m.order for m in mapped)
    assert mapped[-1].tensor == "output" and mapped[0].op_type == "Conv"
