"""Per-layer comparison of two ONNX models: a float model and its lowered form (fp16, QDQ int8).

``compare_onnx_models`` runs both models on the same inputs and compares every tensor they share by
name (the converters keep the float model's tensor names), in the float model's graph order, a few
tensors at a time (``probe``). Where the lowered model quantizes a tensor (a QuantizeLinear and
DequantizeLinear after it), the dequantized value - what the next layer reads - is compared. Each
row gives SQNR and the worst per-sample cosine; ``LayerTable`` answers "which layer loses the most"
(``worst``) and "where does it first fall below a threshold" (``first_below``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.compare.probe import PROBE_BYTES, OnnxProbe, chunks
from onnx_pipeline.compare.scopes import node_module
from onnx_pipeline.errors import BundleError, PipelineError
from onnx_pipeline.onnxfile import ModelParts


@dataclass(frozen=True)
class LayerRow:
    """One tensor both models compute: where it comes from and how far the lowered one is."""

    tensor: str
    #: the lowered model's tensor compared (the dequantized form when the tensor is quantized)
    lowered_tensor: str
    node: str
    op_type: str
    #: the PyTorch module the float model's node came from (exporter metadata), when known
    module: str | None
    #: the lowered model computes this layer from dequantized or half-precision inputs
    quantized: bool
    sqnr_db: float
    min_cosine: float
    max_abs_error: float


@dataclass(frozen=True)
class LayerTable:
    """Every shared layer of a float model and its lowered form, in the float model's graph order."""

    reference: str
    lowered: str
    samples: int
    rows: tuple[LayerRow, ...]
    seconds: float

    __json_extra__ = ("quantized_layers",)

    @property
    def quantized_layers(self) -> int:
        return sum(1 for r in self.rows if r.quantized)

    def quantized_rows(self) -> tuple[LayerRow, ...]:
        return tuple(r for r in self.rows if r.quantized)

    def worst(self, n: int = 5, *, quantized_only: bool = True) -> list[LayerRow]:
        """The ``n`` rows with the lowest SQNR."""
        rows = self.quantized_rows() if quantized_only else self.rows
        return sorted(rows, key=lambda r: r.sqnr_db)[:n]

    def first_below(self, min_sqnr_db: float, *, quantized_only: bool = True) -> LayerRow | None:
        """The first row, in graph order, whose SQNR is below ``min_sqnr_db``."""
        rows = self.quantized_rows() if quantized_only else self.rows
        return next((r for r in rows if r.sqnr_db < min_sqnr_db), None)


def layer_figures(reference: np.ndarray, test: np.ndarray) -> tuple[float, float, float]:
    """(SQNR in dB, worst per-sample cosine, max abs error) of ``test`` against ``reference`` (batch first)."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = test.reshape(len(test), -1).astype(np.float64)
    if not np.all(np.isfinite(out)):
        return -math.inf, -1.0, math.inf
    noise = float(np.sum((ref - out) ** 2))
    signal = float(np.sum(ref**2))
    sqnr = math.inf if noise == 0.0 else 10.0 * math.log10(max(signal, 1e-300) / noise)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    dots = np.sum(ref * out, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines = np.where(norms > 0, dots / norms, np.where(np.all(ref == out, axis=1), 1.0, 0.0))
    return sqnr, float(cosines.min()) if cosines.size else 1.0, float(np.max(np.abs(ref - out))) if ref.size else 0.0


def compare_onnx_models(
    reference_model: str | Path | ModelParts | Any,
    lowered_model: str | Path | ModelParts | Any,
    inputs: np.ndarray | Sequence[np.ndarray],
    *,
    qdq_as_float: bool = True,
    providers: Sequence[str] | None = None,
    budget: int = PROBE_BYTES,
    error: type[PipelineError] = BundleError,
) -> LayerTable:
    """SQNR and cosine of every layer ``lowered_model`` shares with ``reference_model``, on ``inputs``.

    Models are paths, ``ModelParts`` or loaded ``ModelProto``s; ``inputs`` one batch or several (each runs as given:
    a static-batch model needs batches of its size). ``qdq_as_float`` runs QuantizeLinear/DequantizeLinear
    as written (the float simulation of the integer model, as the fidelity figures measure it).
    """
    start = time.perf_counter()
    batches = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    reference = OnnxProbe(reference_model, providers=providers, error=error)
    lowered = OnnxProbe(lowered_model, providers=providers, qdq_as_float=qdq_as_float, error=error)
    shared = _shared_tensors(reference.model.graph, lowered.model.graph)
    samples = sum(len(b) for b in batches)
    rows: list[LayerRow] = []
    for names in chunks([s[0] for s in shared], reference, 2 * samples, budget):
        run = [s for s in shared if s[0] in names]
        ours = reference.run([s[0] for s in run], batches)
        theirs = lowered.run([s[1] for s in run], batches)
        for tensor, lowered_tensor, node, quantized in run:
            ref, test = ours.pop(tensor), theirs.pop(lowered_tensor)
            if ref.shape != test.shape or not np.issubdtype(ref.dtype, np.floating):
                continue
            sqnr, cosine, max_abs = layer_figures(ref, test)
            module = node_module(node)
            half = test.dtype == np.float16
            rows.append(
                LayerRow(
                    tensor, lowered_tensor, node.name, node.op_type, module, quantized or half, sqnr, cosine, max_abs
                )
            )
    return LayerTable(reference.name, lowered.name, samples, tuple(rows), round(time.perf_counter() - start, 3))


def _shared_tensors(reference: Any, lowered: Any) -> list[tuple[str, str, Any, bool]]:
    """(tensor, the lowered tensor to compare, the float model's node, quantized) in the float model's order."""
    producers = {out: node for node in lowered.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in lowered.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    shared = []
    for node in reference.node:
        for tensor in node.output:
            if not tensor or tensor not in producers:
                continue
            source = producers[tensor]
            quantized = any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in source.input
            )
            shared.append((tensor, _dequantized(tensor, consumers), node, quantized))
    return shared


def _dequantized(tensor: str, consumers: dict[str, list[Any]]) -> str:
    """The DequantizeLinear output that follows ``tensor``'s QuantizeLinear, or ``tensor`` itself."""
    for q in consumers.get(tensor, []):
        if q.op_type == "QuantizeLinear":
            for dq in consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return str(dq.output[0])
    return tensor
