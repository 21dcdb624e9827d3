"""Calibration statistics and integer rounding shared by every scheme (power-of-two and float scales).

Positions come from MinMSE: the no-overflow position and a few finer ones are tried, on a histogram
of the calibration activations (``Histogram.best_position``), and exactly on weights
(``weight_position``). Float scales come from MinMax: the largest magnitude over the integer range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnx_pipeline.errors import BundleError

ACT_MIN, ACT_MAX = -128, 127
W_MIN, W_MAX = -127, 127
HIST_BINS = 1 << 14
_CHUNK = 1 << 22


@dataclass
class Histogram:
    """Symmetric histogram of one tensor over [-R, R], R a power of two that doubles as values grow."""

    bins: int = HIST_BINS
    radius: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    amax: float = 0.0

    def add(self, values: np.ndarray) -> None:
        """Accumulate ``values`` (any shape)."""
        flat = values.reshape(-1)
        amax = float(np.max(np.abs(flat))) if flat.size else 0.0
        if not math.isfinite(amax):
            raise BundleError("a calibration activation is not finite (inf/NaN): check the model and inputs")
        self.amax = max(self.amax, amax)
        if amax == 0.0 and self.radius == 0.0:
            self.counts[self.bins // 2] += flat.size
            return
        needed = 2.0 ** math.ceil(math.log2(amax)) if amax > 0 else self.radius
        if self.radius == 0.0:
            self.radius = needed
        while needed > self.radius:
            half = self.counts.reshape(self.bins // 2, 2).sum(axis=1)
            self.counts = np.zeros(self.bins, dtype=np.int64)
            self.counts[self.bins // 4 : self.bins // 4 + self.bins // 2] = half
            self.radius *= 2.0
        scale = np.float32(self.bins / (2.0 * self.radius))
        index = ((flat + np.float32(self.radius)) * scale).astype(np.int64)
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def best_position(self) -> tuple[int, int, dict[int, float]]:
        """(MinMSE position, no-overflow position, mse per candidate) over the accumulated values."""
        p0 = no_overflow_position(self.amax, ACT_MAX)
        if self.radius == 0.0:
            return p0, p0, {p0: 0.0}
        width = 2.0 * self.radius / self.bins
        centers = -self.radius + (np.arange(self.bins) + 0.5) * width
        used = self.counts > 0
        c, n = centers[used], self.counts[used].astype(np.float64)
        errors = {}
        for pos in range(p0 - 1, p0 + 4):
            step = 2.0**-pos
            q = np.clip(np.rint(c / step), ACT_MIN, ACT_MAX) * step
            errors[pos] = float(np.sum(n * (c - q) ** 2) / max(n.sum(), 1.0))
        best = min(errors, key=lambda p: (errors[p], p))
        return best, p0, errors


def no_overflow_position(amax: float, qmax: int) -> int:
    """Largest position whose range still holds ``amax`` (``amax * 2**pos <= qmax``)."""
    if amax <= 0.0 or not math.isfinite(amax):
        return 7
    return math.floor(math.log2(qmax / amax))


def quantize_array(values: np.ndarray, pos: int, qmin: int, qmax: int) -> np.ndarray:
    """int8 values of ``values`` at position ``pos`` (scale ``2**-pos``)."""
    return quantize_scaled(values, 2.0**-pos, qmin, qmax, np.int8)


def quantize_scaled(values: np.ndarray, scale: float, qmin: int, qmax: int, dtype: type = np.int8) -> np.ndarray:
    """Integers of ``values`` at ``scale``: x / scale rounded half to even (as QuantizeLinear), saturated.

    Works in chunks so a 400 MB weight needs a few MB of scratch, not two float copies.
    """
    flat = values.reshape(-1)
    out: np.ndarray = np.empty(flat.size, dtype=dtype)
    divisor = np.float32(scale)
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK].astype(np.float32) / divisor
        np.rint(part, out=part)
        np.clip(part, qmin, qmax, out=part)
        out[start : start + _CHUNK] = part
    return out.reshape(values.shape)


def symmetric_scale(amax: float, qmax: int) -> float:
    """MinMax float scale: ``amax`` maps to ``qmax`` (a zero or non-finite range gets scale 1)."""
    if not math.isfinite(amax) or amax <= 0.0:
        return 1.0
    return float(np.float32(amax / qmax))


def weight_amax(values: np.ndarray) -> float:
    """Largest magnitude of a weight tensor."""
    flat = values.reshape(-1)
    return float(np.max(np.abs(flat))) if flat.size else 0.0


def weight_position(values: np.ndarray) -> tuple[int, int, dict[int, float]]:
    """Exact MinMSE position of a weight tensor over the no-overflow one and finer ones."""
    flat = values.reshape(-1).astype(np.float32, copy=False)
    amax = float(np.max(np.abs(flat))) if flat.size else 0.0
    p0 = no_overflow_position(amax, W_MAX)
    errors: dict[int, float] = {}
    for pos in range(p0, p0 + 4):
        scale = np.float32(2.0**pos)
        inv = np.float32(2.0**-pos)
        total = 0.0
        for start in range(0, flat.size, _CHUNK):
            part = flat[start : start + _CHUNK]
            q = np.rint(part * scale)
            np.clip(q, W_MIN, W_MAX, out=q)
            q *= inv
            q -= part
            total += float(np.dot(q, q))
        errors[pos] = total / max(flat.size, 1)
        if pos > p0 and errors[pos] > errors[pos - 1]:
            break  # the error is unimodal in the position: finer ones only clip more
    best = min(errors, key=lambda p: (errors[p], p))
    return best, p0, errors
