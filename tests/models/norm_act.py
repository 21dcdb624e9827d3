"""A small model with the layers whose exported definitions matter: LayerNorm (its epsilon) and GELU
(its approximation). Faults on these are built by the tests from a clean export."""

import torch
from torch import nn


class NormActModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.act = nn.GELU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over channels
        x = self.act(x)
        return self.head(self.pool(x).flatten(1))


def build() -> nn.Module:
    return NormActModel()


build.input_shape = (1, 3, 16, 16)  # type: ignore[attr-defined]
