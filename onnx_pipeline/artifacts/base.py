"""The shape every artifact builder shares: what it is given (``BuildContext``) and what it returns.

A builder is a module of ``onnx_pipeline.artifacts`` named after the artifact kind it builds
(``int8-qdq`` → ``int8_qdq.py``) that satisfies ``ArtifactBuilder``. It writes its files under
``ctx.out``, judges each model it makes with ``ctx.check`` and returns an ``ArtifactResult``: its
models, its manifest section (recorded under ``artifacts[kind]``), its timings and its README lines.
It never mutates the context; a builder that needs another kind's output reads ``ctx.built[kind]``.

A builder whose ``SPEC.torch_module`` is set gets the run's PyTorch model as ``ctx.torch_model`` (a
TorchScript model or archive is made from the module, not from ONNX); the others never load torch.

The context is shared: the fp32 model is loaded once per call as ``ModelParts`` (its graph, and its
weights as arrays mapped from the run's data file or read once), the held-out data and reference
outputs are computed once for every target of one ``export``/``bundle`` call. A builder derives
what it needs from ``ctx.parts`` (``parts.copy()`` to rewrite a graph) and writes its files with
``onnxfile.write_model``, reporting the digests it computed in ``ArtifactResult.hashes``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from onnx_pipeline.bundling.data import BundleData
from onnx_pipeline.bundling.fidelity import FidelityResult, judge
from onnx_pipeline.files import to_jsonable
from onnx_pipeline.manifest import ModelRecord, RunManifest
from onnx_pipeline.onnxfile import ModelParts
from onnx_pipeline.runtime.session import CHECK, create_session
from onnx_pipeline.targets import FidelityThresholds, HardwareTarget


@dataclass(frozen=True)
class BundleModel:
    """One model file of a bundle and its fidelity against the fp32 reference."""

    file: str
    kind: str
    precision: str
    fidelity: FidelityResult
    optimization_level: str | None = None
    format: str = "onnx"
    external_data: tuple[str, ...] = ()

    def record(self) -> ModelRecord:
        """The manifest's form of this model."""
        return ModelRecord(
            file=self.file,
            kind=self.kind,
            precision=self.precision,
            fidelity=to_jsonable(self.fidelity),
            optimization_level=self.optimization_level,
            format=self.format,
            external_data=self.external_data,
        )


@dataclass(frozen=True)
class ArtifactResult:
    """What one builder made: its models, its manifest section, its timings, its README lines."""

    kind: str
    models: tuple[BundleModel, ...] = ()
    #: recorded in the bundle manifest under ``artifacts[kind]`` (None: nothing to record)
    section: Mapping[str, Any] | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    #: Markdown list items for the bundle README ("- `file`: what it is")
    readme: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    #: sha256 of files it wrote, computed while writing (bundle-relative POSIX path → digest)
    hashes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildContext:
    """Everything a builder may read; shared by every builder of one bundle (never modified)."""

    target: HardwareTarget
    #: the bundle folder being written (temporary until the whole bundle passes)
    out: Path
    run: RunManifest
    #: the run folder's fp32 model (its external data beside it)
    model_path: Path
    #: the fp32 model for this target: shapes inferred, batch fixed to 1 for a static-batch target;
    #: shared and read-only (its arrays may be a mapped file)
    parts: ModelParts
    data: BundleData
    #: the fp32 model's outputs on ``data.heldout`` (what every model of the bundle is judged against)
    reference: tuple[np.ndarray, ...]
    output_names: tuple[str, ...]
    #: whether the bundle's models keep the run's dynamic batch axis
    dynamic_batch: bool
    #: results of the builders that ran before this one, by kind
    built: Mapping[str, ArtifactResult] = field(default_factory=dict)
    #: the run's fp32 model as stored (batch as exported); the same object as ``parts`` when it is
    run_parts: ModelParts | None = None
    #: a lowered model that misses its thresholds keeps its most sensitive layers in float (``--no-fallback``: off)
    fallback: bool = True
    #: the run's PyTorch model (eval mode), loaded only for a target with a ``torch_module`` builder; else None
    torch_model: Any = None

    @property
    def model(self) -> Any:
        """The fp32 model's graph (``parts.skeleton``: large initializers carry no data); read-only."""
        return self.parts.skeleton

    @property
    def source(self) -> ModelParts:
        """The run's model as stored (``run_parts``, else ``parts``)."""
        return self.run_parts if self.run_parts is not None else self.parts

    @property
    def scratch(self) -> Path:
        """A working folder inside the bundle's temporary folder, removed before the manifest is written."""
        path = self.out / ".work"
        path.mkdir(exist_ok=True)
        return path

    def thresholds(self, precision: str) -> FidelityThresholds:
        """The target's fidelity thresholds for ``precision``."""
        return self.target.fidelity[precision]

    def check(
        self,
        file: str,
        kind: str,
        precision: str,
        *,
        level: str | None = None,
        thresholds: FidelityThresholds | None = None,
        qdq_as_float: bool = False,
        external_data: tuple[str, ...] = (),
        session: Any = None,
    ) -> BundleModel:
        """Run ``out/file`` on the held-out inputs on a CPU session and judge it against the reference.

        This is the session ``onnx-pipeline verify BUNDLE`` re-runs (``session``: one the builder
        already opened on that file the same way); a shortfall is recorded in the model's fidelity
        (the bundle step raises once every builder has run).
        """
        if session is None:
            session = create_session(self.out / file, settings=CHECK, qdq_as_float=qdq_as_float)
        outputs = run_batches(session, self.data.heldout)
        result = judge(
            file,
            precision,
            list(self.output_names),
            list(self.reference),
            outputs,
            thresholds or self.thresholds(precision),
            self.data.description,
            provider=session.get_providers()[0],
        )
        fmt = "ort" if file.endswith(".ort") else "onnx"
        if not external_data and (self.out / f"{file}.data").is_file():  # how write_model names a data file
            external_data = (f"{file}.data",)
        return BundleModel(file, kind, precision, result, level, fmt, external_data)


def run_batches(session: Any, samples: np.ndarray) -> list[np.ndarray]:
    """Run a single-input session over ``samples``: in one batch, or batch by batch for a fixed batch (padded)."""
    model_input = session.get_inputs()[0]
    first = model_input.shape[0] if model_input.shape else None
    batch = first if isinstance(first, int) and first > 0 else len(samples)
    outputs: list[list[np.ndarray]] = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        values = session.run(None, {model_input.name: chunk})
        outputs.append([v[: batch - pad] for v in values])
    return [np.concatenate([o[i] for o in outputs]) for i in range(len(outputs[0]))]


def timed(timings: dict[str, float], name: str, start: float) -> None:
    """Record the seconds since ``start`` under ``name`` (rounded to ms)."""
    timings[name] = round(time.perf_counter() - start, 3)


@dataclass(frozen=True)
class BuilderSpec:
    """What a builder module declares about itself, as ``SPEC = BuilderSpec(...)``."""

    #: the artifact kind a profile names ("int8-qdq"); the module is named after it ("int8_qdq")
    kind: str
    #: the precision of the model(s) it makes; the profile must list it and give its fidelity thresholds
    precision: str
    #: build order: a builder may read ``ctx.built`` of kinds with a lower order
    order: int
    #: profile tables it needs (e.g. ("quantization",))
    requires: tuple[str, ...] = ()
    #: other artifact kinds the profile must list with it (e.g. triton needs "fp16")
    needs: tuple[str, ...] = ()
    #: it calibrates on images (the bundle step prepares calibration data)
    calibrated: bool = False
    #: it rewrites the model to the target's opset and batch itself (the export is not constrained)
    rewrites_opset: bool = False
    #: preference as the bundle's default model (lower first); None: never the default
    default_rank: int | None = None
    #: it needs the PyTorch model (``ctx.torch_model``), and its models are not run by onnxruntime: the
    #: bundle step rebuilds the run's model from its recorded source (see ``sources.model_config_from_source``)
    torch_module: bool = False


class ArtifactBuilder(Protocol):
    """The module interface of a builder (a module satisfies it: mypy checks modules against protocols)."""

    SPEC: BuilderSpec

    def build(self, ctx: BuildContext) -> ArtifactResult: ...
