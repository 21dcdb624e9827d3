"""Numerical parity between PyTorch eager and onnxruntime, with figures a user can trust.

The inputs (``make_verification_inputs``): seeded uniform samples spanning the model's real
input range (for image models: every pixel value through the model's normalisation), seeded
normal samples, the same normal samples negated (so a branch on the sign of a statistic sees
both sides), and photographs through the model's own preprocessing. Batch 1 and batch N both
run, so a batch size baked into the graph cannot pass.

The criterion (``Tolerances``): by default the measured noise floor (``compare.floor``): each
output's error against a float64 PyTorch run must stay within a factor of PyTorch float32's own.
Where no float64 run is possible the scale-aware rule decides, and says so; ``--atol``/``--rtol``
make fixed tolerances the criterion.

A check that cannot fail is a defect: reference outputs that are near zero, constant across
inputs, or not finite make the comparison meaningless, and verify fails on them with the
reason rather than passing vacuously.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.compare.floor import format_ratio
from onnx_pipeline.compare.localize import Localization
from onnx_pipeline.compare.outputs import FIXED, NOISE_FLOOR, SCALE_AWARE, OutputParity, compare_output
from onnx_pipeline.compare.reference import flatten_outputs
from onnx_pipeline.config import Tolerances, VerifyConfig
from onnx_pipeline.errors import InputError, VerificationError, first_line
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
class ParityResult:
    """The verdict and the measurements behind it; a failure raises ``VerificationError`` with this."""

    passed: bool
    model: str
    outputs: list[OutputParity]
    tolerances: Tolerances
    #: the criterion: NOISE_FLOOR, SCALE_AWARE (no float64 reference) or FIXED (--atol/--rtol)
    rule: str
    #: why no float64 reference could be computed (None when it was)
    float64_unavailable: str | None
    samples: list[dict[str, Any]]
    providers: list[str]
    errors: list[str]
    seconds: float
    #: where the ONNX model first leaves PyTorch's noise floor (on failure, or with --localize)
    localization: Localization | None = None

    __json_extra__ = ("failures", "verdict", "criterion")

    @property
    def failures(self) -> list[str]:
        return self.errors + [f"{o.name}: {f}" for o in self.outputs for f in o.failures]

    @property
    def verdict(self) -> str:
        """One sentence: passed or failed, and why."""
        return _verdict(self)

    @property
    def criterion(self) -> str:
        """The rule that judged the outputs, in words."""
        return _criterion(self)


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
        sets.append(_image_set(config, preprocessing, sample_shape, static_batch))
    return sets


def _image_set(
    config: VerifyConfig, preprocessing: PreprocessSpec | None, sample_shape: tuple[int, ...], static_batch: int | None
) -> SampleSet:
    if preprocessing is None:
        raise InputError("--images needs a model with image preprocessing (an image classifier)")
    assert config.images is not None
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
    return SampleSet(f"images-b{len(batch)}", batch, "images")


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
                raise InputError(
                    f"the PyTorch model rejects input of shape {list(sample.data.shape)}: {first_line(exc)}. "
                    "Give the right --input-shape"
                ) from None
            references.append([t.detach().float().numpy().copy() for t in flatten_outputs(out)])
    return references


def run_onnx(
    path: Path, samples: list[SampleSet], providers: tuple[str, ...]
) -> tuple[list[list[np.ndarray] | None], list[str], list[str], list[str]]:
    """Run the ONNX model on every sample set: (outputs or None per set, errors, output names, providers)."""
    from onnx_pipeline.runtime.session import create_session

    session = create_session(path, providers=list(providers), error=VerificationError)
    input_meta = session.get_inputs()
    if len(input_meta) != 1:
        raise InputError(f"{Path(path).name} has {len(input_meta)} inputs: verify handles single-input models")
    name = input_meta[0].name
    outputs: list[list[np.ndarray] | None] = []
    errors = []
    for sample in samples:
        try:
            outputs.append([np.asarray(o) for o in session.run(None, {name: sample.data})])
        except Exception as exc:  # onnxruntime raises its own exception types
            errors.append(f"onnxruntime failed on {sample.name} (shape {list(sample.data.shape)}): {first_line(exc)}")
            outputs.append(None)
    return outputs, errors, [o.name for o in session.get_outputs()], list(session.get_providers())


# --------------------------------------------------------------------------- the whole model


def verify_parity(
    onnx_path: Path,
    samples: list[SampleSet],
    references: list[list[np.ndarray]],
    config: VerifyConfig,
    *,
    classification: bool = True,
    exact: list[list[np.ndarray]] | None = None,
    float64_unavailable: str | None = None,
) -> ParityResult:
    """Compare onnxruntime's outputs with the PyTorch references; raise ``VerificationError`` on failure.

    ``exact``: the float64 PyTorch outputs per sample set (``compare.reference``); without them the
    scale-aware rule decides and ``float64_unavailable`` says why.
    """
    start = time.perf_counter()
    outputs, errors, names, providers = run_onnx(onnx_path, samples, config.providers)
    if config.providers and providers and providers[0] != config.providers[0]:
        errors.append(f"requested provider {config.providers[0]} did not run (onnxruntime used {providers[0]})")
    results = _compare_outputs(samples, references, exact, outputs, names, errors, config, classification)
    tolerances = config.tolerances
    if exact is None and float64_unavailable is None:
        float64_unavailable = "no float64 reference was given"
    result = ParityResult(
        passed=not errors and bool(results) and all(o.passed for o in results),
        model=str(onnx_path),
        outputs=results,
        tolerances=tolerances,
        rule=FIXED if tolerances.fixed else SCALE_AWARE if exact is None else NOISE_FLOOR,
        float64_unavailable=None if exact is not None else float64_unavailable,
        samples=[s.describe() for s in samples],
        providers=providers,
        errors=errors,
        seconds=time.perf_counter() - start,
    )
    if not result.passed:
        raise VerificationError(failure_message(result), result=result)
    return result


def _compare_outputs(
    samples: list[SampleSet],
    references: list[list[np.ndarray]],
    exact: list[list[np.ndarray]] | None,
    outputs: list[list[np.ndarray] | None],
    names: list[str],
    errors: list[str],
    config: VerifyConfig,
    classification: bool,
) -> list[OutputParity]:
    """Compare every output over the sample sets onnxruntime ran; shape and count problems go to ``errors``."""
    results: list[OutputParity] = []
    ok_sets = [i for i, o in enumerate(outputs) if o is not None]
    n_outputs = len(references[0]) if references else 0
    if ok_sets and any(len(outputs[i] or []) != n_outputs for i in ok_sets):
        errors.append(f"the ONNX model has {len(names)} outputs but PyTorch returns {n_outputs}")
        return results
    for j in range(n_outputs if ok_sets else 0):
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
                exact=[exact[i][j] for i in ok_sets] if exact is not None else None,
            )
        )
    return results


def failure_message(result: ParityResult) -> str:
    """The ``VerificationError`` message of a failed result: its verdict, then the failures it does not name."""
    verdict = result.verdict
    rest = [f for f in result.failures if f not in verdict and f.split(": ", 1)[-1] not in verdict]
    more = f" ({'; '.join(rest[:2])}{' ...' if len(rest) > 2 else ''})" if rest else ""
    return f"verification FAILED: {verdict}{more}"


def _verdict(result: ParityResult) -> str:
    rule = _criterion(result)
    located = ""
    first = result.localization.first_divergence if result.localization is not None else None
    if first is not None:
        located = f"; first divergence at {first.onnx_node} (module {first.module})"
    if result.passed:
        judged = [o.noise for o in result.outputs if o.noise is not None]
        if result.rule == NOISE_FLOOR and judged:
            worst = max(judged, key=lambda n: n.ratio)
            return (
                f"passed: every output within {result.tolerances.noise_factor:g}× PyTorch's own float32 rounding "
                f"(worst {format_ratio(worst.ratio)})" + located
            )
        return f"passed under the {rule}" + located
    if result.errors:
        return f"failed: {result.errors[0]}" + located
    failed = [o for o in result.outputs if not o.passed]
    if not failed:
        return "failed: no output could be compared" + located
    first_output = failed[0]
    noise = first_output.noise
    if result.rule == NOISE_FLOOR and noise is not None and not noise.within and not first_output.degenerate:
        return (
            f"failed: output '{first_output.name}' differs {format_ratio(noise.ratio)} more than PyTorch's own float32 "
            f"rounding (allowed {noise.factor:g}×)" + located
        )
    return f"failed: output '{first_output.name}': {first_output.failures[0]} ({rule})" + located


def _criterion(result: ParityResult) -> str:
    atol, rtol = result.tolerances.scale_aware()
    if result.rule == FIXED:
        return f"fixed tolerances: atol {atol:g}×scale + rtol {rtol:g}×|ref|"
    if result.rule == SCALE_AWARE:
        return (
            f"scale-aware rule (atol {atol:g}×scale + rtol {rtol:g}×|ref|), no float64 reference: "
            f"{result.float64_unavailable}"
        )
    return (
        f"noise floor: error against float64 within {result.tolerances.noise_factor:g}× PyTorch float32's own "
        "(max and mean)"
    )
