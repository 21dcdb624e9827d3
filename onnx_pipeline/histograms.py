"""Compact error histograms: how the absolute errors of one output spread, per sample set.

Verification computes every element's |ONNX − PyTorch| and keeps only a few statistics; the HTML
report wants the whole distribution. A histogram over log10-spaced bins, shared by the sample sets of
one output so they can be overlaid, is kept instead of the errors themselves: a few hundred numbers
in the manifest whatever the output's size.

Bins: ``BINS_PER_DECADE`` per decade from the largest error down at most ``DECADES`` decades;
smaller non-zero errors are counted in the first bin, exact zeros apart (``zeros``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

BINS_PER_DECADE = 4
DECADES = 10


def log_edges(values: np.ndarray) -> list[float]:
    """log10 bin edges covering the positive ``values`` (at most ``DECADES`` decades below the largest)."""
    positive = values[values > 0]
    if not positive.size:
        return [0.0, 1.0 / BINS_PER_DECADE]
    top = math.ceil(math.log10(float(positive.max())) * BINS_PER_DECADE) / BINS_PER_DECADE
    low = math.floor(math.log10(float(positive.min())) * BINS_PER_DECADE) / BINS_PER_DECADE
    low = max(low, top - DECADES)
    if top <= low:
        top = low + 1.0 / BINS_PER_DECADE
    count = round((top - low) * BINS_PER_DECADE)
    return [round(low + i / BINS_PER_DECADE, 4) for i in range(count + 1)]


def error_histograms(diff: np.ndarray, valid: np.ndarray, set_names: Sequence[str], set_sizes: Sequence[int]) -> Any:
    """Histograms of ``diff`` (rows: samples, sample sets one after the other) per sample set.

    ``valid`` masks the elements compared (both outputs finite). Returns
    ``{"edges_log10": [...], "sets": {name: {"counts": [...], "zeros": n, "elements": n}}}``.
    """
    values = np.where(valid, diff, 0.0)
    edges = log_edges(values[valid])
    sets: dict[str, Any] = {}
    start = 0
    for name, size in zip(set_names, set_sizes, strict=True):
        block = values[start : start + size][valid[start : start + size]]
        start += size
        positive = block[block > 0]
        logs = np.clip(np.log10(positive), edges[0], edges[-1]) if positive.size else positive
        counts, _ = np.histogram(logs, bins=np.asarray(edges))
        sets[name] = {
            "counts": [int(c) for c in counts],
            "zeros": int(block.size - positive.size),
            "elements": int(block.size),
        }
    return {"edges_log10": edges, "sets": sets}
