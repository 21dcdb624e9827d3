"""One output of a model against its PyTorch reference: every figure, judged by one rule.

The rules (see ``config.Tolerances``): ``NOISE_FLOOR`` (the default where a float64 reference exists:
``compare.floor``), ``SCALE_AWARE`` (the fallback without one) and ``FIXED`` (``--atol``/``--rtol``).
Whatever the rule, the figures of the others are measured and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnx_pipeline.compare.floor import NoiseFloor, noise_floor
from onnx_pipeline.config import Tolerances
from onnx_pipeline.histograms import error_histograms

#: the criteria an output can be judged by (see ``Tolerances``)
NOISE_FLOOR, SCALE_AWARE, FIXED = "noise-floor", "scale-aware", "fixed"


@dataclass(frozen=True)
class OutputParity:
    """Every figure for one output, over every verified sample."""

    name: str
    shape: list[int]
    passed: bool
    failures: list[str]
    #: the criterion that judged the error: NOISE_FLOOR, SCALE_AWARE or FIXED
    rule: str
    scale: float  # max |reference|: the output's dynamic range
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float  # elementwise |diff| / |reference|, where |reference| > 0
    min_cosine: float
    top1_agreement: float | None
    top5_agreement: float | None
    top1_significant_mismatches: int | None
    #: the smallest atol (in units of ``scale``) that passes with the configured rtol, and vice versa
    smallest_passing_atol: float
    smallest_passing_rtol: float
    nonfinite_reference: int
    nonfinite_onnx: int
    nonfinite_mismatch: int
    degenerate: str | None
    #: the error against float64 beside PyTorch float32's own (None without a float64 reference)
    noise: NoiseFloor | None = None
    per_sample_set_max_abs: dict[str, float] = field(default_factory=dict)
    #: |error| histograms per sample set (``histograms.error_histograms``), for the HTML report
    error_histograms: dict[str, Any] = field(default_factory=dict)
    #: the noise-floor ratio per sample set (empty without a float64 reference)
    per_sample_set_ratio: dict[str, float] = field(default_factory=dict)


def _as_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Sample sets concatenated on the batch axis, each sample one row, as float64."""
    return np.concatenate([a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1) for a in arrays]).astype(np.float64)


def compare_output(
    name: str,
    references: list[np.ndarray],
    actuals: list[np.ndarray],
    set_names: list[str],
    tolerances: Tolerances,
    *,
    classification: bool,
    exact: list[np.ndarray] | None = None,
) -> OutputParity:
    """All figures for one output across sample sets (concatenated on the batch axis).

    ``exact``: the float64 PyTorch outputs; with them (and no fixed tolerances) the noise floor decides.
    """
    ref, act = _as_rows(references), _as_rows(actuals)
    nonfinite = _nonfinite_counts(ref, act)
    both = np.isfinite(ref) & np.isfinite(act)
    diff = np.where(both, np.abs(ref - act), 0.0)
    absref = np.where(both, np.abs(ref), 0.0)
    scale = float(absref.max()) if both.any() else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(absref > 0, diff / absref, 0.0)
    rule = FIXED if tolerances.fixed else NOISE_FLOOR if exact is not None else SCALE_AWARE
    noise = per_set_ratio = None
    if exact is not None and _is_float(references[0]):
        noise = noise_floor(_as_rows(exact), ref, act, tolerances.noise_factor)
        per_set_ratio = _per_set_ratios(exact, references, actuals, set_names, tolerances.noise_factor)
    elif rule == NOISE_FLOOR:
        rule = SCALE_AWARE  # integer outputs: nothing to round
    atol, rtol = tolerances.scale_aware()
    need_atol, need_rtol = _smallest_passing(diff, absref, scale, max_abs, atol, rtol)
    degenerate = _degenerate(ref, scale, nonfinite[0], tolerances)
    allowed = factor_slack = None
    if rule == NOISE_FLOOR and noise is not None:
        factor_slack = tolerances.noise_factor * noise.floor_max
    else:
        allowed = atol * scale + rtol * absref
    failures = _failures(
        rule=rule,
        degenerate=degenerate,
        nonfinite=nonfinite,
        noise=noise,
        within=bool((diff <= allowed).all()) if allowed is not None else True,
        figures=(max_abs, scale, atol, rtol, need_atol, need_rtol),
        min_cos=(min_cos := _min_cosine(ref, act, both)),
        tolerances=tolerances,
    )
    top: tuple[float | None, float | None, int | None] = (None, None, None)
    if classification and ref.shape[1] >= 2 and not degenerate:
        top = _top_classes(ref, act, both, factor_slack, atol * scale, rtol)
        if top[2]:
            failures.append(f"top-1 class differs on {top[2]} sample(s) beyond the tolerance margin")
    return OutputParity(
        name=name,
        shape=list(references[0].shape[1:]) if references[0].ndim else [],
        passed=not failures,
        failures=failures,
        rule=rule,
        scale=scale,
        max_abs_error=max_abs,
        mean_abs_error=float(diff[both].mean()) if both.any() else 0.0,
        max_rel_error=float(rel.max()) if rel.size else 0.0,
        min_cosine=min_cos,
        top1_agreement=top[0],
        top5_agreement=top[1],
        top1_significant_mismatches=top[2],
        smallest_passing_atol=need_atol,
        smallest_passing_rtol=need_rtol,
        nonfinite_reference=nonfinite[0],
        nonfinite_onnx=nonfinite[1],
        nonfinite_mismatch=nonfinite[2],
        degenerate=degenerate,
        noise=noise,
        per_sample_set_max_abs=_per_set_max(diff, references, set_names),
        per_sample_set_ratio=per_set_ratio or {},
        error_histograms=error_histograms(diff, both, set_names, [r.shape[0] if r.ndim else 1 for r in references]),
    )


def _is_float(array: np.ndarray) -> bool:
    return bool(np.issubdtype(np.asarray(array).dtype, np.floating))


def _nonfinite_counts(ref: np.ndarray, act: np.ndarray) -> tuple[int, int, int]:
    """(non-finite in the reference, in the ONNX output, positions or kinds that differ)."""
    ref_finite, act_finite = np.isfinite(ref), np.isfinite(act)
    mismatch = ref_finite != act_finite
    # NaN must meet NaN, +Inf must meet +Inf.
    same_kind = np.where(np.isnan(ref), np.isnan(act), ref == act)
    mismatch |= ~ref_finite & ~act_finite & ~same_kind
    return int((~ref_finite).sum()), int((~act_finite).sum()), int(mismatch.sum())


def _smallest_passing(
    diff: np.ndarray, absref: np.ndarray, scale: float, max_abs: float, atol: float, rtol: float
) -> tuple[float, float]:
    """The smallest atol (with ``rtol``) and the smallest rtol (with ``atol``) of the scale-aware rule that pass."""
    with np.errstate(divide="ignore", invalid="ignore"):
        need_atol = float(np.max((diff - rtol * absref) / scale)) if scale > 0 else float("inf")
        excess = diff - atol * scale
        need_rtol_all = np.where(excess > 0, np.where(absref > 0, excess / absref, np.inf), 0.0)
    need_atol = max(need_atol, 0.0) if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return need_atol, float(need_rtol_all.max()) if need_rtol_all.size else 0.0


def _min_cosine(ref: np.ndarray, act: np.ndarray, both: np.ndarray) -> float:
    """Cosine similarity per sample; the worst sample counts."""
    r0, a0 = np.where(both, ref, 0.0), np.where(both, act, 0.0)
    norms = np.linalg.norm(r0, axis=1) * np.linalg.norm(a0, axis=1)
    dots = (r0 * a0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines = np.where(norms > 0, dots / norms, np.where(np.linalg.norm(r0 - a0, axis=1) == 0, 1.0, 0.0))
    return float(cosines.min()) if cosines.size else 1.0


def _degenerate(ref: np.ndarray, scale: float, nonfinite_ref: int, tolerances: Tolerances) -> str | None:
    """Why the reference outputs make the comparison meaningless, or None."""
    if nonfinite_ref:
        return f"reference outputs are not finite ({int(np.isnan(ref).sum())} NaN, {int(np.isinf(ref).sum())} Inf)"
    if scale < tolerances.degenerate_below:
        return f"reference outputs are near zero (max |output| = {scale:.3g} < {tolerances.degenerate_below:g})"
    if ref.shape[0] >= 2 and float(np.max(np.std(ref, axis=0))) <= 1e-6 * scale:
        return "reference outputs are constant across inputs: the output does not depend on the input"
    return None


def _failures(
    *,
    rule: str,
    degenerate: str | None,
    nonfinite: tuple[int, int, int],
    noise: NoiseFloor | None,
    within: bool,
    figures: tuple[float, float, float, float, float, float],
    min_cos: float,
    tolerances: Tolerances,
) -> list[str]:
    """What fails for one output under its rule (the top-1 check is added by the caller)."""
    failures: list[str] = []
    if degenerate:
        failures.append(
            f"{degenerate}; the comparison would be vacuous. With --weights random, keep the default "
            "rescaling; otherwise check the model and its weights"
        )
    if nonfinite[2]:
        failures.append(
            f"NaN/Inf positions differ in {nonfinite[2]} elements "
            f"(reference has {nonfinite[0]} non-finite, onnx has {nonfinite[1]})"
        )
    max_abs, scale, atol, rtol, need_atol, need_rtol = figures
    if rule == NOISE_FLOOR and noise is not None and not noise.within:
        failures.append(noise.describe())
    if rule != NOISE_FLOOR and not within:
        failures.append(
            f"max abs error {max_abs:.3g} exceeds atol {atol:g}×scale {scale:.3g} "
            f"+ rtol {rtol:g}×|ref| (smallest passing atol {need_atol:.3g}, rtol {need_rtol:.3g})"
        )
    if min_cos < tolerances.min_cosine:
        failures.append(f"cosine similarity {min_cos:.6f} below {tolerances.min_cosine}")
    return failures


def _top_classes(
    ref: np.ndarray, act: np.ndarray, both: np.ndarray, factor_slack: float | None, atol_abs: float, rtol: float
) -> tuple[float, float, int]:
    """(top-1 agreement, top-5 overlap, top-1 flips whose reference margin exceeds twice the allowed error)."""
    r_top = np.argsort(-np.where(both, ref, -np.inf), axis=1)
    a_top = np.argsort(-np.where(both, act, -np.inf), axis=1)
    top1 = float(np.mean(r_top[:, 0] == a_top[:, 0]))
    k = min(5, ref.shape[1])
    top5 = float(np.mean([len(set(r_top[i, :k]) & set(a_top[i, :k])) / k for i in range(ref.shape[0])]))
    rows = np.arange(ref.shape[0])
    margin = ref[rows, r_top[:, 0]] - ref[rows, a_top[:, 0]]  # >= 0
    if factor_slack is not None:
        slack: Any = 2 * factor_slack
    else:
        slack = 2 * (atol_abs + rtol * np.abs(ref[rows, r_top[:, 0]]))
    return top1, top5, int(np.sum((r_top[:, 0] != a_top[:, 0]) & (margin > slack)))


def _per_set_max(diff: np.ndarray, references: list[np.ndarray], set_names: list[str]) -> dict[str, float]:
    per_set: dict[str, float] = {}
    start = 0
    for set_name, r in zip(set_names, references, strict=True):
        n = r.shape[0] if r.ndim else 1
        per_set[set_name] = float(diff[start : start + n].max()) if n else 0.0
        start += n
    return per_set


def _per_set_ratios(
    exact: list[np.ndarray], references: list[np.ndarray], actuals: list[np.ndarray], names: list[str], factor: float
) -> dict[str, float]:
    return {
        name: noise_floor(e, r, a, factor).ratio
        for name, e, r, a in zip(names, exact, references, actuals, strict=True)
    }
