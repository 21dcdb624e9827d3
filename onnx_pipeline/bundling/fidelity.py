"""Fidelity of a bundle model against the fp32 reference: SQNR, cosine, top-1/top-5 agreement.

Definitions (per output, over the held-out samples):

- ``sqnr_db``: 10·log10(Σ ref² / Σ (ref − test)²) over all elements; ``inf`` when identical.
- ``min_cosine``: the worst per-sample cosine similarity between flattened ref and test.
- ``top1_agreement``: fraction of *decided* samples whose arg-max class is the same in ref and
  test; ``top1_agreement_all`` counts every sample.
- ``top5_agreement``: fraction of decided samples whose reference top-1 class is in the test's
  top-5 (for outputs with 5 classes or fewer: the same as top-1).

A sample is decided when the reference's top-1 lead over its runner-up exceeds ``DECIDED_SIGMAS``
(3) standard deviations of the difference between two classes' errors, √2 times the test model's
RMS error on that sample: below that, which class wins is decided by the quantization noise, not by
the model, and a faithful model flips it often enough to fail a bundle by chance (random weights
give near-flat logits, where int8 flips top-1 on every sample at an SQNR of 20 dB; a VGG16 A8W8 model
at 26 dB and cosine 0.9988 flipped a sample whose lead was 2.1 RMS). At 3 sigmas a faithful model
flips a decided sample about once in 700. With no decided sample the class agreement is not measurable, says
so, and is not judged; cosine and SQNR still are, so a broken model cannot hide there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnx_pipeline.targets import FidelityThresholds

#: a sample's class agreement is judged when its top-1 lead exceeds this many standard deviations of
#: the noise on the difference of two classes (√2 × the model's RMS error on that sample)
DECIDED_SIGMAS = 3.0


@dataclass(frozen=True)
class OutputFidelity:
    """Figures for one output of one model."""

    output: str
    samples: int
    sqnr_db: float
    min_cosine: float
    mean_cosine: float
    #: None when no sample is decided (see the module docstring)
    top1_agreement: float | None
    top5_agreement: float | None
    max_abs_error: float
    decided_samples: int = 0
    top1_agreement_all: float = 0.0


class Checked:
    """A result that passed when nothing fell short: ``failures`` empty (JSON: ``passed`` beside the fields)."""

    failures: tuple[str, ...]

    __json_extra__: tuple[str, ...] = ("passed",)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class FidelityResult(Checked):
    """One bundle model against the reference, with the thresholds used and what fell short."""

    model: str
    precision: str
    outputs: tuple[OutputFidelity, ...]
    thresholds: FidelityThresholds
    failures: tuple[str, ...]
    #: how the held-out inputs were made ("N held-out images" or "synthetic")
    data: str
    #: the execution provider that actually ran the model
    provider: str = "CPUExecutionProvider"


def output_figures(name: str, reference: np.ndarray, test: np.ndarray) -> OutputFidelity:
    """Compare one output (batch first) of a model against the reference."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    out = np.asarray(test, dtype=np.float64).reshape(len(test), -1)
    if ref.shape != out.shape:
        raise ValueError(f"output '{name}': shape {out.shape} differs from the reference's {ref.shape}")
    noise = float(np.sum((ref - out) ** 2))
    signal = float(np.sum(ref**2))
    if not np.all(np.isfinite(out)):
        sqnr = -math.inf
    elif noise == 0.0:
        sqnr = math.inf
    else:
        sqnr = 10.0 * math.log10(max(signal, 1e-300) / noise)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    dots = np.sum(ref * out, axis=1)
    # Two all-zero vectors agree perfectly; one all-zero vector against a non-zero one does not.
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.all(ref == out, axis=1), 1, 0))
    # A sample with a NaN or infinite output agrees with nothing.
    finite = np.all(np.isfinite(out), axis=1)
    cosines = np.where(finite, np.nan_to_num(cosines, nan=-1.0), -1.0)
    classes = ref.shape[1]
    ref_top1 = np.argmax(ref, axis=1)
    agree1 = (ref_top1 == np.argmax(out, axis=1)) & finite
    k = min(5, classes)
    test_topk = np.argsort(-out, axis=1)[:, :k]
    agree5 = np.array([bool(finite[i]) and ref_top1[i] in test_topk[i] for i in range(len(ref))])
    ordered = np.sort(ref, axis=1)
    lead = ordered[:, -1] - ordered[:, -2] if classes >= 2 else np.full(len(ref), np.inf)
    with np.errstate(invalid="ignore"):
        rms = np.sqrt(np.mean((ref - out) ** 2, axis=1))
    decided = ~finite | (lead > DECIDED_SIGMAS * math.sqrt(2.0) * np.nan_to_num(rms, nan=np.inf))
    top1 = float(np.mean(agree1[decided])) if decided.any() else None
    top5 = float(np.mean(agree5[decided])) if decided.any() else None
    return OutputFidelity(
        output=name,
        samples=len(ref),
        sqnr_db=round(sqnr, 3) if math.isfinite(sqnr) else sqnr,
        min_cosine=float(np.min(cosines)),
        mean_cosine=float(np.mean(cosines)),
        top1_agreement=top1,
        top5_agreement=top5,
        max_abs_error=float(np.max(np.abs(ref - out))) if np.all(np.isfinite(out)) else math.inf,
        decided_samples=int(decided.sum()),
        top1_agreement_all=float(np.mean(agree1)),
    )


def judge(
    model: str,
    precision: str,
    names: list[str],
    reference: list[np.ndarray],
    test: list[np.ndarray],
    thresholds: FidelityThresholds,
    data: str,
    *,
    provider: str = "CPUExecutionProvider",
) -> FidelityResult:
    """Figures for every output, and every threshold each one misses (collected, not raised)."""
    outputs = tuple(output_figures(n, r, t) for n, r, t in zip(names, reference, test, strict=True))
    failures: list[str] = []
    for fig in outputs:
        checks = (
            ("cosine", fig.min_cosine, thresholds.min_cosine),
            ("SQNR dB", fig.sqnr_db, thresholds.min_sqnr_db),
            ("top-1 agreement", fig.top1_agreement, thresholds.min_top1_agreement),
            ("top-5 agreement", fig.top5_agreement, thresholds.min_top5_agreement),
        )
        for label, value, minimum in checks:
            if value is None:  # class agreement not measurable: no decided sample (see module docstring)
                continue
            if not value >= minimum:  # also catches NaN
                failures.append(f"{model} [{fig.output}]: {label} {value:.6g} < {minimum:.6g}")
    return FidelityResult(
        model=model,
        precision=precision,
        outputs=outputs,
        thresholds=thresholds,
        failures=tuple(failures),
        data=data,
        provider=provider,
    )
