"""The float64 pass one sample at a time, only where that is the same computation."""

from __future__ import annotations

import numpy as np
import torch

from onnx_pipeline.compare.reference import compute_reference_float64, float64_pieces
from tests.helpers import tiny_module


class _BatchBranch(torch.nn.Module):
    """Each sample's output depends on the whole batch's sign: splitting would change the answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x - 1


class _FixedBatch(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(3, -1).sum(dim=1)


def _batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, 3, 32, 32)).astype(np.float32)


def test_independent_samples_are_split() -> None:
    module = tiny_module()
    pieces = float64_pieces(module, _batch())
    assert [p.shape[0] for p in pieces] == [1, 1, 1]


def test_a_branch_on_the_batch_keeps_the_batch_whole() -> None:
    batch = _batch()
    batch[0] = np.abs(batch[0]) * 10  # the batch sums positive, samples 1 and 2 alone do not
    batch[1:] = -np.abs(batch[1:])
    pieces = float64_pieces(_BatchBranch(), batch)
    assert len(pieces) == 1 and pieces[0].shape[0] == 3


def test_a_fixed_batch_model_keeps_the_batch_whole() -> None:
    pieces = float64_pieces(_FixedBatch(), _batch())
    assert len(pieces) == 1 and pieces[0].shape[0] == 3


def test_split_float64_reference_matches_the_whole_batch() -> None:
    from onnx_pipeline.steps.verify import SampleSet

    module = tiny_module()
    sample = SampleSet(name="s", data=_batch(1), origin="normal")
    (outputs,), why = compute_reference_float64(module, [sample])
    assert why is None
    with torch.inference_mode():
        whole = module.double()(torch.from_numpy(sample.data).double()).numpy()
    module.float()
    assert outputs[0].dtype == np.float64 and outputs[0].shape == whole.shape
    np.testing.assert_allclose(outputs[0], whole, rtol=1e-12, atol=1e-12)
