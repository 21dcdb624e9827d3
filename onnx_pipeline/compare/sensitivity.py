"""Per-layer sensitivity of a lowered model (int8 QDQ, XINT8, fp16) against its float model.

Two measurements, both on a few held-out samples:

1. every lowered layer's output against the float model's (SQNR, worst cosine), from the one
   per-layer comparison (``compare_onnx_models``), and its *SQNR drop*: how much SQNR the layer
   loses against its inputs (deep layers inherit their inputs' error; the drop is what the layer adds);
2. for the ``top`` layers by drop, the final output when that layer alone is kept in float
   (``keep_float.keep_in_float``): its *effect* is the gain in output SQNR (dB) over the lowered model.

Layers are ranked by effect (measured ones first), then by drop. Only the candidates are run one at a
time, each as one session on the small batch, so the analysis stays a fraction of a bundle's build.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_pipeline.compare.keep_float import keep_in_float, match_layers
from onnx_pipeline.compare.layers import compare_onnx_models, layer_figures
from onnx_pipeline.files import release_memory
from onnx_pipeline.onnxfile import ModelParts
from onnx_pipeline.runtime.session import ONE_SHOT, create_session

#: the layers whose precision matters: they carry weights or combine tensors
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sub", "Concat", "BatchNormalization")
#: layers run one at a time kept in float (the rest are ranked by their SQNR drop only)
DEFAULT_TOP = 6
#: held-out samples the analysis runs on
DEFAULT_SAMPLES = 4
#: bytes of probed tensors per comparison run (fewer, larger runs: each re-runs the model up to its tensors)
PROBE_BUDGET = 256 << 20
#: SQNR above this is exact for ranking purposes (an input straight from the model input)
_CAP_DB = 100.0


@dataclass(frozen=True)
class LayerSensitivity:
    """One lowered layer: its own figures, and the final output's when it alone is kept in float."""

    layer: str
    op_type: str
    tensor: str
    #: the PyTorch module it came from, when the exporter recorded it
    module: str | None
    sqnr_db: float
    cosine: float
    #: SQNR the layer loses against its inputs (dB)
    sqnr_drop_db: float
    #: output SQNR gain (dB) when it alone is kept in float; None when not measured
    effect: float | None = None
    output_sqnr_db: float | None = None
    output_cosine: float | None = None


@dataclass(frozen=True)
class SensitivityResult:
    """The ranked layers of one lowered model, most sensitive first."""

    model: str
    metric: str
    samples: int
    #: the lowered model's final output against the float model's, on the same samples
    output_sqnr_db: float
    output_cosine: float
    layers: tuple[LayerSensitivity, ...]
    seconds: float

    def ranked_names(self) -> list[str]:
        return [x.layer for x in self.layers]


@dataclass(frozen=True)
class VariantRunner:
    """Runs the lowered model with some layers kept in float on fixed inputs (one session per variant)."""

    lowered: ModelParts
    reference: ModelParts
    inputs: np.ndarray
    half: bool
    run: Callable[[Any, np.ndarray], list[np.ndarray]]

    def outputs(self, layers: Sequence[str]) -> list[np.ndarray]:
        variant = keep_in_float(self.lowered, self.reference, layers, half=self.half) if layers else self.lowered
        source = variant.session_source()
        session = create_session(
            source.skeleton.SerializeToString(),
            settings=ONE_SHOT,
            external_initializers=source.external,
            external_data_folder=source.folder,
            what="a kept-in-float variant",
        )
        outputs = self.run(session, self.inputs)
        del session, variant, source
        self.lowered.release()
        self.reference.release()
        release_memory()  # one variant's session and float weights go back before the next is made
        return outputs


def output_figures(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> tuple[float, float]:
    """(SQNR dB, worst cosine) of every output together (each flattened per sample)."""
    ref = np.concatenate([np.asarray(r, dtype=np.float64).reshape(len(r), -1) for r in reference], axis=1)
    out = np.concatenate([np.asarray(o, dtype=np.float64).reshape(len(o), -1) for o in outputs], axis=1)
    sqnr, cosine, _ = layer_figures(ref, out)
    return sqnr, cosine


def analyse_sensitivity(
    name: str,
    runner: VariantRunner,
    reference_outputs: Sequence[np.ndarray],
    *,
    batches: Sequence[np.ndarray],
    qdq_as_float: bool,
    top: int = DEFAULT_TOP,
) -> SensitivityResult:
    """Rank the lowered layers of ``runner.lowered`` (see the module docstring).

    ``batches``: ``runner.inputs`` as the models take them (one batch, or batches of 1 for a static
    model); ``reference_outputs``: the float model's outputs on ``runner.inputs``.
    """
    start = time.perf_counter()
    table = compare_onnx_models(
        runner.reference,  # the arrays as they are: no copy of a model that may be over 2 GB
        runner.lowered,
        list(batches),
        qdq_as_float=qdq_as_float,
        budget=PROBE_BUDGET,
    )
    rows = {r.tensor: r for r in table.rows}
    matches = [m for m in match_layers(runner.reference.skeleton, runner.lowered.skeleton, LAYER_OPS,
                                       half=runner.half) if m.lowered and m.tensor in rows]  # fmt: skip
    inputs_of = {n.name: list(n.input) for n in runner.reference.skeleton.graph.node}
    layers = []
    for m in matches:
        row = rows[m.tensor]
        before = [min(rows[i].sqnr_db, _CAP_DB) for i in inputs_of[m.name] if i in rows]
        # a layer reading the model input has nothing to compare its input with: no drop of its own
        drop = (min(before) - min(row.sqnr_db, _CAP_DB)) if before else 0.0
        layers.append(LayerSensitivity(m.name, m.op_type, m.tensor, row.module, row.sqnr_db, row.min_cosine, drop))
    base_sqnr, base_cos = output_figures(reference_outputs, runner.outputs([]))
    by_drop = sorted(layers, key=lambda x: -x.sqnr_drop_db)
    measured = []
    for layer in by_drop[:top]:
        sqnr, cosine = output_figures(reference_outputs, runner.outputs([layer.layer]))
        gain = _gain(sqnr, base_sqnr)
        measured.append(_with(layer, effect=gain, output_sqnr_db=sqnr, output_cosine=cosine))
    ranked = sorted(measured, key=lambda x: (-(x.effect or 0.0), -x.sqnr_drop_db)) + by_drop[top:]
    return SensitivityResult(
        model=name,
        metric="effect",
        samples=len(runner.inputs),
        output_sqnr_db=base_sqnr,
        output_cosine=base_cos,
        layers=tuple(ranked),
        seconds=round(time.perf_counter() - start, 3),
    )


def _gain(sqnr: float, base: float) -> float:
    if math.isinf(sqnr) and math.isinf(base):
        return 0.0
    if math.isinf(sqnr):
        return _CAP_DB
    if math.isinf(base):
        return -_CAP_DB
    return sqnr - base


def _with(layer: LayerSensitivity, **changes: Any) -> LayerSensitivity:
    import dataclasses

    return dataclasses.replace(layer, **changes)
