"""The noise floor: PyTorch float32's own error sets the unit, with a lower bound where it is ~0."""

from __future__ import annotations

import math

import numpy as np

from onnx_pipeline.compare.floor import EPS32, FLOOR_ULPS, NoiseFloor, error_stats, format_ratio, noise_floor


def _rounded(exact: np.ndarray) -> np.ndarray:
    return exact.astype(np.float32).astype(np.float64)


def _floor(seed: int, onnx_noise: float) -> NoiseFloor:
    """PyTorch float32 with noise 1e-6 around the exact values, the ONNX result with ``onnx_noise``."""
    rng = np.random.default_rng(seed)
    exact = rng.standard_normal((4, 1000))
    torch32 = exact + rng.standard_normal(exact.shape) * 1e-6
    onnx = exact + rng.standard_normal(exact.shape) * onnx_noise
    return noise_floor(exact, torch32, onnx, factor=10)


def test_a_faithful_float32_result_sits_at_the_floor() -> None:
    floor = _floor(0, 1e-6)
    assert 0.5 < floor.ratio < 2 and floor.within
    assert not floor.floor_at_lower_bound


def test_a_fault_thirty_times_the_rounding_is_caught() -> None:
    floor = _floor(1, 3e-5)
    assert floor.ratio_max > 20 and floor.ratio_mean > 20 and not floor.within
    assert "allowed 10×" in floor.describe()


def test_exact_operations_do_not_make_the_ratio_unstable() -> None:
    """PyTorch exact (a sign flip): the floor is the lower bound, so one rounding more is not a fault."""
    rng = np.random.default_rng(2)
    exact = _rounded(rng.standard_normal((3, 100)))
    floor = noise_floor(exact, exact.copy(), exact.copy(), factor=10)
    assert floor.torch_max == 0 and floor.ratio == 0 and floor.within and floor.floor_at_lower_bound
    assert math.isclose(floor.floor_max, FLOOR_ULPS * EPS32 * np.abs(exact).max())
    one_ulp = exact + np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert noise_floor(exact, exact, one_ulp, factor=10).within
    # ...but a real difference still shows, even where PyTorch itself is exact
    assert not noise_floor(exact, exact, exact * (1 + 1e-4), factor=10).within


def test_non_finite_elements_are_left_to_the_non_finite_check() -> None:
    exact = np.array([[1.0, np.nan, 3.0]])
    stats = error_stats(exact, np.array([[1.0, 5.0, 3.5]]))
    assert stats.elements == 2 and stats.max_abs == 0.5


def test_ratios_read_well() -> None:
    assert format_ratio(1.234) == "1.23×" and format_ratio(8526.2) == "8,526×" and format_ratio(math.inf) == "∞×"
