"""Error histograms: every compared element counted once, in its sample set and its decade."""

from __future__ import annotations

import numpy as np

from onnx_pipeline.histograms import BINS_PER_DECADE, DECADES, error_histograms, log_edges


def test_each_set_counts_its_own_elements_in_the_right_bins() -> None:
    diff = np.array([[0.0, 1e-3, 2e-3], [5e-6, 0.0, 0.0], [1e-20, 3e-1, 0.0]])
    valid = np.array([[True, True, True], [True, True, False], [True, True, True]])
    result = error_histograms(diff, valid, ["a", "b"], [1, 2])
    edges = np.asarray(result["edges_log10"])
    assert edges[-1] >= np.log10(3e-1) and edges[0] == edges[-1] - DECADES
    assert np.allclose(np.diff(edges), 1 / BINS_PER_DECADE)
    a, b = result["sets"]["a"], result["sets"]["b"]
    assert (a["elements"], a["zeros"], sum(a["counts"])) == (3, 1, 2)
    assert (b["elements"], b["zeros"], sum(b["counts"])) == (5, 2, 3)  # the invalid element is not counted
    # 1e-20 is below the lowest edge: counted in the first bin, not lost
    assert b["counts"][0] == 1
    bin_of = int(np.searchsorted(edges, np.log10(5e-6), side="right")) - 1
    assert b["counts"][bin_of] == 1


def test_all_zero_errors_still_give_a_valid_histogram() -> None:
    result = error_histograms(np.zeros((2, 4)), np.ones((2, 4), dtype=bool), ["only"], [2])
    assert len(result["edges_log10"]) == 2 and result["sets"]["only"] == {"counts": [0], "zeros": 8, "elements": 8}
    assert log_edges(np.array([0.0])) == [0.0, 0.25]
