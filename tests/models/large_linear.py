"""A classifier just over 2 GB of float32 weights, built from a few large Linear layers so it runs fast.

539 M parameters (2.16 GB): a small conv stem, then 128 → 16384 → 16384 → 16384 → 10. Each of the two
16384 × 16384 layers is 1.07 GB, under protobuf's 2 GiB limit alone, over it together. Used by the
large-model test and benchmarks/large_model.py as ``tests/models/large_linear.py:build``.
"""

import torch
from torch import nn

WIDTH = 16384


def build() -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(128, WIDTH),
            nn.ReLU(),
            nn.Linear(WIDTH, WIDTH),
            nn.ReLU(),
            nn.Linear(WIDTH, WIDTH),
            nn.ReLU(),
            nn.Linear(WIDTH, 10),
        )
    return model.eval()


build.input_shape = (1, 3, 32, 32)  # type: ignore[attr-defined]
build.preprocessing = {"resize": 36, "crop": 32}  # type: ignore[attr-defined]
build.labels = [f"class {i}" for i in range(10)]  # type: ignore[attr-defined]
