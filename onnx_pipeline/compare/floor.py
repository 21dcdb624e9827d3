"""The measured noise floor: how far an output may be from exact arithmetic before it is a fault.

PyTorch runs the model twice on the same inputs, in float32 (the reference users compare with) and in
float64 (close enough to exact arithmetic here: its rounding is 2^29 times finer). PyTorch float32's
own error against float64 is what rounding alone does to this model on these inputs: the floor. An
ONNX model's error against float64 is judged in units of that floor, per output, for the max and the
mean over every element: a ratio near 1 is a faithful export, a fault (a scaled channel, a shifted
bias, another epsilon or approximation) shows as tens to thousands.

A pure ratio is unstable where PyTorch's error is ~0: an output made of exact operations (a sign
flip, a max, a copy) has no float32 error at all, and an implementation that rounds once more (or
sums in another order) would then show an infinite ratio. So the floor never goes below
``FLOOR_ULPS`` float32 epsilons of the output's magnitude - its scale (max |ref|) for the max, its
mean |ref| for the mean: a float32 result cannot be closer than half an epsilon to the exact value
of each element, so a difference of that size is representation, not a fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
#: the floor's lower bound, in float32 epsilons of the output's magnitude (see the module docstring)
FLOOR_ULPS = 4.0
#: elements compared at a time: bounds the temporaries on large activations
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ErrorStats:
    """Max and mean absolute difference over the finite elements, and the magnitude of the exact values."""

    max_abs: float
    mean_abs: float
    scale: float  # max |exact|
    mean_magnitude: float  # mean |exact|
    elements: int


def error_stats(exact: np.ndarray, approx: np.ndarray) -> ErrorStats:
    """|approx - exact| statistics, elements where either is not finite left out; a few rows at a time."""
    exact = exact.reshape(exact.shape[0], -1) if exact.ndim else exact.reshape(1, 1)
    approx = approx.reshape(exact.shape)
    max_abs = total = scale = magnitude = 0.0
    count = 0
    rows = max(1, _CHUNK_ELEMENTS // max(1, exact.shape[1]))
    for start in range(0, exact.shape[0], rows):
        e = exact[start : start + rows].astype(np.float64, copy=False)
        a = approx[start : start + rows].astype(np.float64, copy=False)
        finite = np.isfinite(e) & np.isfinite(a)
        if not finite.all():
            e, a = e[finite], a[finite]
        if not e.size:
            continue
        diff = np.abs(a - e)
        max_abs = max(max_abs, float(diff.max()))
        total += float(diff.sum())
        del diff
        absolute = np.abs(e)
        scale = max(scale, float(absolute.max()))
        magnitude += float(absolute.sum())
        count += int(e.size)
    return ErrorStats(max_abs, total / count if count else 0.0, scale, magnitude / count if count else 0.0, count)


def format_ratio(ratio: float) -> str:
    """A ratio for people: ``1.28×``, ``31.4×``, ``8,530×``."""
    if not math.isfinite(ratio):
        return "∞×"
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.3g}×"


def _ratio(error: float, floor: float) -> float:
    if floor > 0:
        return error / floor
    return 0.0 if error == 0 else math.inf


@dataclass(frozen=True)
class NoiseFloor:
    """An output's (or a layer's) error against float64, beside PyTorch float32's own, and the verdict.

    ``floor_max``/``floor_mean``: PyTorch float32's error against float64 (max, mean), raised to the
    lower bound ``FLOOR_ULPS``·eps32·scale (mean: ·mean |ref|) where PyTorch is (nearly) exact.
    ``ratio``: the larger of ``onnx_max / floor_max`` and ``onnx_mean / floor_mean``; within when it
    is at most ``factor``.
    """

    torch_max: float
    torch_mean: float
    onnx_max: float
    onnx_mean: float
    floor_max: float
    floor_mean: float
    factor: float
    #: the floor's lower bounds: ``FLOOR_ULPS``·eps32·max |ref| and ``FLOOR_ULPS``·eps32·mean |ref|
    lower_bound_max: float
    lower_bound_mean: float

    __json_extra__ = ("ratio_max", "ratio_mean", "ratio", "within", "floor_at_lower_bound")

    @property
    def floor_at_lower_bound(self) -> bool:
        """The lower bound, not PyTorch's own error, set the floor (for the max or the mean)."""
        return self.torch_max < self.lower_bound_max or self.torch_mean < self.lower_bound_mean

    @property
    def ratio_max(self) -> float:
        return _ratio(self.onnx_max, self.floor_max)

    @property
    def ratio_mean(self) -> float:
        return _ratio(self.onnx_mean, self.floor_mean)

    @property
    def ratio(self) -> float:
        return max(self.ratio_max, self.ratio_mean)

    @property
    def within(self) -> bool:
        return self.ratio <= self.factor

    def describe(self) -> str:
        """One phrase: the ratio, which statistic, and the floor."""
        which = "max" if self.ratio_max >= self.ratio_mean else "mean"
        onnx = self.onnx_max if which == "max" else self.onnx_mean
        floor = self.floor_max if which == "max" else self.floor_mean
        return (
            f"{which} error {onnx:.3g} against float64 is {format_ratio(self.ratio)} PyTorch float32's own "
            f"{floor:.3g} (allowed {self.factor:g}×)"
        )


def noise_floor(exact: np.ndarray, torch32: np.ndarray, onnx: np.ndarray, factor: float) -> NoiseFloor:
    """Judge ``onnx`` against the float64 result ``exact`` in units of ``torch32``'s own error."""
    own = error_stats(exact, torch32)
    test = error_stats(exact, onnx)
    bound_max = FLOOR_ULPS * EPS32 * own.scale
    bound_mean = FLOOR_ULPS * EPS32 * own.mean_magnitude
    return NoiseFloor(
        torch_max=own.max_abs,
        torch_mean=own.mean_abs,
        onnx_max=test.max_abs,
        onnx_mean=test.mean_abs,
        floor_max=max(own.max_abs, bound_max),
        floor_mean=max(own.mean_abs, bound_mean),
        factor=factor,
        lower_bound_max=bound_max,
        lower_bound_mean=bound_mean,
    )
