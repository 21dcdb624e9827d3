"""Sensitivity and automatic fallback: a tiny model with one layer reading extreme outliers, made to miss int8."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from onnx_pipeline.config import BundleConfig
from onnx_pipeline.errors import BundleError
from onnx_pipeline.steps.bundle import build_bundle
from onnx_pipeline.steps.verify_bundle import verify_bundle
from onnx_pipeline.targets import load_target
from tests.helpers import make_run_folder

#: the layer reading the outliers: per-tensor int8 of its input crushes every channel but the outlier one
FRAGILE = "conv3"


def outlier_module() -> Any:
    """conv1 → relu → conv2 (channel 0 ×1e4) → conv3 (reads channel 0 ×1e-4) → relu → pool → fc."""
    import torch
    from torch import nn

    class Outliers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: Any) -> Any:
            x = torch.relu(self.conv1(x))
            x = self.conv3(self.conv2(x))
            return self.fc(torch.flatten(torch.mean(torch.relu(x), dim=(2, 3), keepdim=True), 1))

    torch.manual_seed(0)
    module = Outliers().eval()
    with torch.no_grad():
        module.conv2.weight[0] *= 1e4
        module.conv2.bias[0] *= 1e4
        module.conv3.weight[:, 0] *= 1e-4
    return module


def tight_profile(tmp_path: Path, fraction: float = 0.5) -> Path:
    """cpu-x86_64 renamed, with int8 thresholds the outliers make plain int8 miss, and a fallback budget."""
    text = load_target("cpu-x86_64").source.read_text(encoding="utf-8")
    text = re.sub(r'^name = ".*"$', 'name = "tight"', text, count=1, flags=re.M)
    text = text.replace('artifacts = ["fp32-optimized", "ort", "int8-qdq"]', 'artifacts = ["int8-qdq"]')
    head, int8 = text.split("[fidelity.int8]")
    int8 = re.sub(r"min_sqnr_db = [0-9.]+", "min_sqnr_db = 25.0", int8)
    int8 = re.sub(r"min_cosine = [0-9.]+", "min_cosine = 0.995", int8)
    path = tmp_path / "tight.toml"
    path.write_text(f"{head}[fidelity.int8]{int8}\n[fallback]\nmax_float_layers_fraction = {fraction}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def outlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_folder(tmp_path_factory.mktemp("outliers") / "run", module=outlier_module())
