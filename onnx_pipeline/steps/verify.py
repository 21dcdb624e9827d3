"""Numerical parity between PyTorch eager and onnxruntime, with figures a user can trust.

The inputs (``make_verification_inputs``): seeded uniform samples spanning the model's real
input range (for image models: every pixel value through the model's normalisation), seeded
normal samples, the same normal samples negated (so a branch on the sign of a statistic sees
both sides), and photographs through the model's own preprocessing. Batch 1 and batch N both
run, so a batch size baked into the graph cannot pass.

A check that cannot fail is a defect: reference outputs that are near zero, constant across
inputs, or not finite make the comparison meaningless, and verify fails on them with the
reason rather than passing vacuously.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.config import Tolerances, VerifyConfig
from onnx_pipeline.errors import InputError, VerificationError
from onnx_pipeline.imagespec import PreprocessSpec
from onnx_pipeline.runtime.preprocess import list_images, load_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSet:
    """One named batch of inputs."""

    name: str
    data: np.ndarray
    origin: str  # "uniform", "normal", "mirrored", "images"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "shape": list(self.data.shape)}


@dataclass(frozen=True)
class OutputParity:
    """Every figure for one output, over every verified sample."""

    name: str
    shape: list[int]
    passed: bool
    failures: list[str]
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
    per_sample_set_max_abs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ParityResult:
    """The verdict and the measurements behind it; a failure raises ``VerificationError`` with this."""

    passed: bool
    model: str
    outputs: list[OutputParity]
    tolerances: Tolerances
    samples: list[dict[str, Any]]
    providers: list[str]
    errors: list[str]
    seconds: float

    @property
    def failures(self) -> list[str]:
        return self.errors + [f"{o.name}: {f}" for o in self.outputs for f in o.failures]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "model": self.model,
            "tolerances": dict(self.tolerances.__dict__),
            "providers": self.providers,
            "samples": self.samples,
            "outputs": [o.to_dict() for o in self.outputs],
            "errors": self.errors,
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
        }


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def make_verification_inputs(
    input_shape: tuple[int, ...],
    preprocessing: PreprocessSpec | None,
    config: VerifyConfig,
    *,
    dynamic_batch: bool = True,
) -> list[SampleSet]:
    """Seeded random batches at the model's input scale, and photographs when given."""
    rng = np.random.default_rng(config.seed)
    static_batch = int(input_shape[0]) if not dynamic_batch else None
    small = static_batch or 1
    large = static_batch or config.batch_size
    sample_shape = tuple(int(d) for d in input_shape[1:])
    low: np.ndarray | np.floating[Any]
    high: np.ndarray | np.floating[Any]
    if preprocessing is not None and len(sample_shape) == 3 and sample_shape[0] == preprocessing.channels:
        channel_low, channel_high = preprocessing.input_range()
        low, high = channel_low.reshape(-1, 1, 1), channel_high.reshape(-1, 1, 1)
    else:
        low, high = np.float32(-1.0), np.float32(1.0)

    def uniform(n: int) -> np.ndarray:
        u = rng.random((n, *sample_shape), dtype=np.float32)
        return (low + u * (high - low)).astype(np.float32)

    normal = rng.standard_normal((large, *sample_shape), dtype=np.float32)
    sets = [
        SampleSet(f"uniform-b{small}", uniform(small), "uniform"),
        SampleSet(f"normal-b{large}", normal, "normal"),
        SampleSet(f"mirrored-b{large}", -normal, "mirrored"),
    ]
    if config.images is not None:
        if preprocessing is None:
            raise InputError("--images needs a model with image preprocessing (an image classifier)")
        paths = list_images(config.images)[: config.max_images]
        batch = load_batch(paths, preprocessing)
        if batch.shape[1:] != sample_shape:
            raise InputError(
                f"images preprocess to {list(batch.shape[1:])} but the model takes {list(sample_shape)}: "
                "check --input-shape"
            )
        if static_batch:
            usable = len(batch) - len(batch) % static_batch
            if usable == 0:
                raise InputError(f"the model has a static batch of {static_batch}: give at least that many images")
            batch = batch[:usable]
        sets.append(SampleSet(f"images-b{len(batch)}", batch, "images"))
    return sets


def compute_reference(module: Any, samples: list[SampleSet]) -> list[list[np.ndarray]]:
    """Run the PyTorch module (eval, inference mode) on every sample set; outputs as numpy."""
    import torch

    module.eval()
    references = []
    with torch.inference_mode():
        for sample in samples:
            try:
                out = module(torch.from_numpy(sample.data))
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise InputError(
                    f"the PyTorch model rejects input of shape {list(sample.data.shape)}: {first}. "
                    "Give the right --input-shape"
                ) from None
            references.append([t.detach().float().numpy().copy() for t in _flatten(out)])
    return references


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, list | tuple):
        return [t for item in out for t in _flatten(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _flatten(item)]
    return [out]


def run_onnx(
    path: Path, samples: list[SampleSet], providers: tuple[str, ...]
) -> tuple[list[list[np.ndarray] | None], list[str], list[str], list[str]]:
    """Run the ONNX model on every sample set: (outputs or None per set, errors, output names, providers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0][:300]
        raise VerificationError(f"onnxruntime cannot load {Path(path).name}: {first}") from None
    input_meta = session.get_inputs()
    if len(input_meta) != 1:
        raise InputError(f"{Path(path).name} has {len(input_meta)} inputs: verify handles single-input models")
    name = input_meta[0].name
    outputs: list[list[np.ndarray] | None] = []
    errors = []
    for sample in samples:
        try:
            outputs.append([np.asarray(o) for o in session.run(None, {name: sample.data})])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300]
            errors.append(f"onnxruntime failed on {sample.name} (shape {list(sample.data.shape)}): {first}")
            outputs.append(None)
    return outputs, errors, [o.name for o in session.get_outputs()], list(session.get_providers())


def compare_output(
    name: str,
    references: list[np.ndarray],
    actuals: list[np.ndarray],
    set_names: list[str],
    tolerances: Tolerances,
    *,
    classification: bool,
) -> OutputParity:
    """All figures for one output across sample sets (concatenated on the batch axis)."""
    ref = np.concatenate([r.reshape(r.shape[0], -1) if r.ndim else r.reshape(1, 1) for r in references]).astype(
        np.float64
    )
    act = np.concatenate([a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1) for a in actuals]).astype(np.float64)
    failures: list[str] = []
    ref_finite, act_finite = np.isfinite(ref), np.isfinite(act)
    nonfinite_ref = int((~ref_finite).sum())
    nonfinite_act = int((~act_finite).sum())
    mismatch = ref_finite != act_finite
    both_nonfinite = ~ref_finite & ~act_finite
    # NaN must meet NaN, +Inf must meet +Inf.
    same_kind = np.where(np.isnan(ref), np.isnan(act), ref == act)
    mismatch |= both_nonfinite & ~same_kind
    nonfinite_mismatch = int(mismatch.sum())
    both = ref_finite & act_finite
    diff = np.where(both, np.abs(ref - act), 0.0)
    absref = np.where(both, np.abs(ref), 0.0)
    scale = float(absref.max()) if both.any() else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff[both].mean()) if both.any() else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(absref > 0, diff / absref, 0.0)
    max_rel = float(rel.max()) if rel.size else 0.0
    allowed = tolerances.atol * scale + tolerances.rtol * absref
    within = bool((diff <= allowed).all())
    with np.errstate(divide="ignore", invalid="ignore"):
        need_atol = float(np.max((diff - tolerances.rtol * absref) / scale)) if scale > 0 else float("inf")
        excess = diff - tolerances.atol * scale
        need_rtol_all = np.where(excess > 0, np.where(absref > 0, excess / absref, np.inf), 0.0)
    need_atol = max(need_atol, 0.0) if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    need_rtol = float(need_rtol_all.max()) if need_rtol_all.size else 0.0
    # Cosine per sample; the worst sample counts.
    r0, a0 = np.where(both, ref, 0.0), np.where(both, act, 0.0)
    norms = np.linalg.norm(r0, axis=1) * np.linalg.norm(a0, axis=1)
    dots = (r0 * a0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines = np.where(norms > 0, dots / norms, np.where(np.linalg.norm(r0 - a0, axis=1) == 0, 1.0, 0.0))
    min_cos = float(cosines.min()) if cosines.size else 1.0
    # Degenerate reference outputs: the comparison would mean nothing.
    degenerate = None
    if nonfinite_ref:
        degenerate = (
            f"reference outputs are not finite ({int(np.isnan(ref).sum())} NaN, {int(np.isinf(ref).sum())} Inf)"
        )
    elif scale < tolerances.degenerate_below:
        degenerate = f"reference outputs are near zero (max |output| = {scale:.3g} < {tolerances.degenerate_below:g})"
    elif ref.shape[0] >= 2 and float(np.max(np.std(ref, axis=0))) <= 1e-6 * scale:
        degenerate = "reference outputs are constant across inputs: the output does not depend on the input"
    if degenerate:
        failures.append(
            f"{degenerate}; the comparison would be vacuous. With --weights random, keep the default "
            "rescaling; otherwise check the model and its weights"
        )
    if nonfinite_mismatch:
        failures.append(
            f"NaN/Inf positions differ in {nonfinite_mismatch} elements "
            f"(reference has {nonfinite_ref} non-finite, onnx has {nonfinite_act})"
        )
    if not within:
        failures.append(
            f"max abs error {max_abs:.3g} exceeds atol {tolerances.atol:g}×scale {scale:.3g} "
            f"+ rtol {tolerances.rtol:g}×|ref| (smallest passing atol {need_atol:.3g}, rtol {need_rtol:.3g})"
        )
    if min_cos < tolerances.min_cosine:
        failures.append(f"cosine similarity {min_cos:.6f} below {tolerances.min_cosine}")
    top1 = top5 = None
    significant = None
    if classification and ref.shape[1] >= 2 and not degenerate:
        r_top = np.argsort(-np.where(both, ref, -np.inf), axis=1)
        a_top = np.argsort(-np.where(both, act, -np.inf), axis=1)
        top1 = float(np.mean(r_top[:, 0] == a_top[:, 0]))
        k = min(5, ref.shape[1])
        top5 = float(np.mean([len(set(r_top[i, :k]) & set(a_top[i, :k])) / k for i in range(ref.shape[0])]))
        rows = np.arange(ref.shape[0])
        margin = ref[rows, r_top[:, 0]] - ref[rows, a_top[:, 0]]  # >= 0
        slack = 2 * (tolerances.atol * scale + tolerances.rtol * np.abs(ref[rows, r_top[:, 0]]))
        significant = int(np.sum((r_top[:, 0] != a_top[:, 0]) & (margin > slack)))
        if significant:
            failures.append(f"top-1 class differs on {significant} sample(s) beyond the tolerance margin")
    per_set: dict[str, float] = {}
    start = 0
    for set_name, r in zip(set_names, references, strict=True):
        n = r.shape[0] if r.ndim else 1
        per_set[set_name] = float(diff[start : start + n].max()) if n else 0.0
        start += n
    return OutputParity(
        name=name,
        shape=list(references[0].shape[1:]) if references[0].ndim else [],
        passed=not failures,
        failures=failures,
        scale=scale,
        max_abs_error=max_abs,
        mean_abs_error=mean_abs,
        max_rel_error=max_rel,
        min_cosine=min_cos,
        top1_agreement=top1,
        top5_agreement=top5,
        top1_significant_mismatches=significant,
        smallest_passing_atol=need_atol,
        smallest_passing_rtol=need_rtol,
        nonfinite_reference=nonfinite_ref,
        nonfinite_onnx=nonfinite_act,
        nonfinite_mismatch=nonfinite_mismatch,
        degenerate=degenerate,
        per_sample_set_max_abs=per_set,
    )


def verify_parity(
    onnx_path: Path,
    samples: list[SampleSet],
    references: list[list[np.ndarray]],
    config: VerifyConfig,
    *,
    classification: bool = True,
) -> ParityResult:
    """Compare onnxruntime's outputs with the PyTorch references; raise ``VerificationError`` on failure."""
    start = time.perf_counter()
    outputs, errors, names, providers = run_onnx(onnx_path, samples, config.providers)
    if config.providers and providers and providers[0] != config.providers[0]:
        errors.append(f"requested provider {config.providers[0]} did not run (onnxruntime used {providers[0]})")
    results: list[OutputParity] = []
    ok_sets = [i for i, o in enumerate(outputs) if o is not None]
    n_outputs = len(references[0]) if references else 0
    if ok_sets and any(len(outputs[i] or []) != n_outputs for i in ok_sets):
        errors.append(f"the ONNX model has {len(names)} outputs but PyTorch returns {n_outputs}")
    elif ok_sets:
        for j in range(n_outputs):
            refs = [references[i][j] for i in ok_sets]
            acts = [outputs[i][j] for i in ok_sets]  # type: ignore[index]
            shape_errors = [
                f"{samples[i].name}: shape {list(a.shape)} vs PyTorch {list(r.shape)}"
                for i, r, a in zip(ok_sets, refs, acts, strict=True)
                if r.shape != a.shape
            ]
            if shape_errors:
                errors.append(f"output {names[j]} has the wrong shape: " + "; ".join(shape_errors))
                continue
            results.append(
                compare_output(
                    names[j] if j < len(names) else f"output_{j}",
                    refs,
                    acts,
                    [samples[i].name for i in ok_sets],
                    config.tolerances,
                    classification=classification,
                )
            )
    result = ParityResult(
        passed=not errors and bool(results) and all(o.passed for o in results),
        model=str(onnx_path),
        outputs=results,
        tolerances=config.tolerances,
        samples=[s.describe() for s in samples],
        providers=providers,
        errors=errors,
        seconds=time.perf_counter() - start,
    )
    if not result.passed:
        raise VerificationError(
            "verification FAILED: " + "; ".join(result.failures[:3]) + (" ..." if len(result.failures) > 3 else ""),
            result=result,
        )
    return result
