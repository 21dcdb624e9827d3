"""The seed notebook's ControlFlowModel: its forward branches on the sign of the input's sum."""

import torch
from torch import nn


class ControlFlowModel(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n, 100)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.sum() > 0:  # noqa: SIM108 - kept as the seed notebook wrote it
            output = input
        else:
            output = -input
        return output


def build() -> nn.Module:
    return ControlFlowModel(10)


build.input_shape = (1, 10)  # type: ignore[attr-defined]


class WhereModel(nn.Module):
    """The same computation written so that every exporter keeps both branches."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.where(input.sum() > 0, input, -input)


def build_where() -> nn.Module:
    return WhereModel()


build_where.input_shape = (1, 10)  # type: ignore[attr-defined]
