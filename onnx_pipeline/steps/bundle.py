"""The bundle step: build ``RUN/bundles/<target>/`` from a run folder for one hardware target.

What goes in is decided by the target's artifact kinds, each built by its plug-in module of
``onnx_pipeline.artifacts`` (never by the target's name). Every model is judged against the fp32
model on held-out inputs (images not used for calibration); those inputs and the reference outputs
travel in ``fidelity/heldout.npz``, so ``onnx-pipeline verify BUNDLE`` can re-check the bundle on the
device. The manifest is ``manifest.BundleManifest``; its fields are documented there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.artifacts import builders_for
from onnx_pipeline.artifacts.base import (
    ArtifactBuilder,
    ArtifactResult,
    BuildContext,
    BundleData,
    BundleModel,
    run_batches,
)
from onnx_pipeline.bundling.data import prepare_data
from onnx_pipeline.bundling.fidelity import Checked
from onnx_pipeline.bundling.hashing import FileHasher
from onnx_pipeline.config import BundleConfig, ModelConfig
from onnx_pipeline.errors import BundleError, InputError, OutputExistsError, first_line
from onnx_pipeline.files import atomic_output_dir
from onnx_pipeline.manifest import BUNDLE_UNLISTED, BundleManifest, RunManifest, TargetInfo
from onnx_pipeline.onnxfile import ModelParts, infer_shapes, load_parts
from onnx_pipeline.report import tool_versions
from onnx_pipeline.report_html import write_report
from onnx_pipeline.runtime.session import create_session
from onnx_pipeline.steps.bundle_readme import HELDOUT_FILE, bundle_readme
from onnx_pipeline.targets import HardwareTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleResult(Checked):
    """What ``build_bundle`` wrote (or, on failure, would have written) and every figure measured."""

    target: str
    bundle_dir: Path
    models: tuple[BundleModel, ...]
    files: Mapping[str, str]
    calibration: Mapping[str, Any] | None
    heldout: Mapping[str, Any]
    #: each artifact kind's manifest section
    artifacts: Mapping[str, Any]
    timings: Mapping[str, float]
    failures: tuple[str, ...] = ()

    __json_extra__ = ("passed", "summary")

    @property
    def summary(self) -> str:
        """One line per bundle for the CLI: each model's precision and its worst figures vs fp32."""
        return fidelity_summary(self.bundle_dir, [m.fidelity for m in self.models], self.failures)


def fidelity_summary(where: Path, results: Sequence[Any], failures: Sequence[str]) -> str:
    """``passed, DIR: model (precision): cosine …, SQNR … dB, top-1 …; …`` for fidelity results."""
    parts = []
    for r in results:
        if r.outputs:
            fig = min(r.outputs, key=lambda o: o.min_cosine)
            parts.append(
                f"{r.model} ({r.precision}): cosine {fig.min_cosine:.4f}, SQNR {fig.sqnr_db:.1f} dB, "
                + (
                    f"top-1 {fig.top1_agreement:.0%} of {fig.decided_samples} decided"
                    if fig.top1_agreement is not None
                    else "top-1 not measurable (every reference top-1 lead is within the model's noise)"
                )
            )
    status = "FAILED" if failures else "passed"
    return f"{status}, {where}: " + "; ".join(parts)


class SharedInputs:
    """What the bundles of one ``export``/``bundle`` call share, each computed once, on first use.

    The run manifest (its files hashed once), the fp32 model as ``ModelParts`` (as stored, and with
    the batch fixed to 1 for static-batch targets: the same weight arrays), the calibration and
    held-out data, and the reference outputs on each distinct held-out set.
    """

    def __init__(self, run_dir: Path, *, run: RunManifest | None = None, model: ModelConfig | None = None) -> None:
        """``run``: the folder's manifest when the caller has just written it (its files are not hashed again).

        ``model``: the PyTorch model the caller exported (``export``); without it, a target that needs the
        PyTorch model rebuilds it from the manifest's source, under ``model_config_from_source``'s trust rules.
        """
        self.run_dir = Path(run_dir)
        self._run: RunManifest | None = run
        self._model = model
        self._torch_model: Any = None
        self._parts: dict[bool, ModelParts] = {}
        self._data: dict[tuple[Any, ...], BundleData] = {}
        self._reference: dict[str, tuple[np.ndarray, ...]] = {}

    def run(self) -> RunManifest:
        if self._run is None:
            self._run = RunManifest.read(self.run_dir)
        return self._run

    def parts(self, *, dynamic: bool) -> ModelParts:
        """The fp32 model, shapes inferred; ``dynamic=False`` fixes a dynamic batch to 1."""
        run = self.run()
        if run.dynamic_batch not in self._parts:
            path = run.model_path
            try:
                parts = load_parts(path)
                infer_shapes(parts.skeleton)
            except Exception as exc:  # onnx raises assorted errors on broken files
                raise InputError(f"{path} is not a loadable ONNX model ({first_line(exc)}): re-run export") from None
            self._parts[run.dynamic_batch] = parts
        if dynamic not in self._parts:
            from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

            parts = self._parts[run.dynamic_batch].copy()
            graph = parts.skeleton.graph
            make_input_shape_fixed(graph, graph.input[0].name, [1, *[int(d) for d in run.inputs[0].shape[1:]]])
            infer_shapes(parts.skeleton)
            self._parts[dynamic] = parts
        return self._parts[dynamic]

    def data(self, config: BundleConfig, calibrated: bool, max_calibration: int) -> BundleData:
        run = self.run()
        key = (config, calibrated, max_calibration)
        if key not in self._data:
            shape = tuple(int(d) for d in run.inputs[0].shape[1:])
            self._data[key] = prepare_data(config, run.preprocessing, shape, calibrated, max_calibration)
        return self._data[key]

    def reference(self, heldout: np.ndarray) -> tuple[np.ndarray, ...]:
        """The run's model (the file, as ``verify BUNDLE`` reads it) on ``heldout``."""
        key = hashlib.sha256(np.ascontiguousarray(heldout).data.cast("B")).hexdigest() + str(heldout.shape)
        if key not in self._reference:
            path = self.run().model_path
            session = create_session(path, what=f"{path.name} (the run's model)")
            self._reference[key] = tuple(run_batches(session, heldout))
        return self._reference[key]

    def torch_model(self, target: str, trust: bool) -> Any:
        """The run's PyTorch model in eval mode, built once (from the exported config, or the manifest's source)."""
        if self._torch_model is None:
            from onnx_pipeline.sources import load_model

            self._torch_model = load_model(self._model or _source_config(self.run(), target, trust)).module
        return self._torch_model

    def release(self) -> None:
        """Drop the model's mapped pages from this process (between builders: they are read again if needed)."""
        for parts in self._parts.values():
            parts.release()


def build_bundle(
    run_dir: Path,
    target: HardwareTarget,
    config: BundleConfig,
    *,
    shared: SharedInputs | None = None,
    progress: Callable[[str], None] | None = None,
) -> BundleResult:
    """Write ``run_dir/bundles/<target.name>/``; raise ``BundleError`` with the figures if it falls short.

    Every fidelity shortfall is collected first; the one error raised carries the full
    ``BundleResult`` in ``.result``. Nothing is left at the bundle path when the build fails.
    ``shared``: what the bundles of one call share (made here when not given); ``progress`` is
    called with each artifact kind as it starts.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    out_path = run_dir / "bundles" / target.name
    if out_path.exists() and not config.force:  # say so before minutes of work (checked again on renaming)
        raise OutputExistsError(f"{out_path} already exists: pass --force to replace it")
    shared = shared or SharedInputs(run_dir)
    run = shared.run()
    builders = builders_for(target)
    _check_fits(run, target, builders)
    ctx = _context(shared, target, config, builders)
    with atomic_output_dir(out_path, force=config.force) as tmp, FileHasher(tmp) as hasher:
        ctx = dataclasses.replace(ctx, out=tmp)
        results = _run_builders(ctx, builders, hasher, shared, progress)
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        _write_heldout(tmp, ctx)
        models = tuple(m for r in results for m in r.models)
        default = _default_model(builders, results)
        (tmp / "README.md").write_text(bundle_readme(target, run, results, ctx.data, default), encoding="utf-8")
        timings = {f"build_{r.kind}": r.timings.get("total", 0.0) for r in results}
        for r in results:
            timings.update({f"{r.kind}:{k}": v for k, v in r.timings.items() if k != "total"})
        timings["total"] = round(time.perf_counter() - started, 3)
        result = BundleResult(
            target=target.name,
            bundle_dir=out_path,
            models=models,
            files=hasher.digests(exclude=BUNDLE_UNLISTED),
            calibration=ctx.data.calibration_info,
            heldout={**ctx.data.heldout_info, "file": HELDOUT_FILE},
            artifacts={r.kind: r.section for r in results if r.section is not None},
            timings=timings,
            failures=tuple(f for m in models for f in m.fidelity.failures),
        )
        if result.failures:
            raise BundleError(
                f"bundle '{target.name}' falls short of the target's fidelity thresholds: "
                + "; ".join(result.failures),
                result=result,
            )
        _manifest(target, run, ctx, result, default).write(tmp)
        write_report(tmp, check=False)  # just written and hashed: not read again
    log.info("bundle %s written to %s", target.name, out_path)
    return result


def _check_fits(run: RunManifest, target: HardwareTarget, builders: Sequence[ArtifactBuilder]) -> None:
    if run.opset not in target.opset and not all(b.SPEC.rewrites_opset for b in builders):
        raise BundleError(
            f"the model uses opset {run.opset}; target '{target.name}' takes {target.opset.min}..{target.opset.max}: "
            f"re-export with --opset {min(max(run.opset, target.opset.min), target.opset.max)}"
        )
    if target.batch == "dynamic" and not run.dynamic_batch:
        raise BundleError(
            f"target '{target.name}' needs a dynamic batch axis but the model's batch is static: "
            "re-export without --static-batch"
        )
    if len(run.inputs) != 1:
        raise BundleError(f"bundles support single-input models; this model has {len(run.inputs)} inputs")
    if not all(isinstance(d, int) for d in run.inputs[0].shape[1:]):
        raise BundleError(f"the model's input shape {list(run.inputs[0].shape)} is dynamic beyond the batch axis")


def _context(
    shared: SharedInputs, target: HardwareTarget, config: BundleConfig, builders: Sequence[ArtifactBuilder]
) -> BuildContext:
    """The model, the data and the reference outputs every builder is judged on (shared between targets)."""
    run = shared.run()
    quantization = target.quantization
    max_calibration = quantization.max_calibration_samples if quantization else 64
    data = shared.data(config, any(b.SPEC.calibrated for b in builders), max_calibration)
    dynamic = run.dynamic_batch and target.batch == "dynamic"
    parts = shared.parts(dynamic=dynamic)
    return BuildContext(
        target=target,
        out=Path("."),
        run=run,
        model_path=run.model_path,
        parts=parts,
        data=data,
        reference=shared.reference(data.heldout),
        output_names=tuple(o.name for o in parts.skeleton.graph.output),
        dynamic_batch=dynamic,
        run_parts=shared.parts(dynamic=run.dynamic_batch),
        fallback=config.fallback,
        torch_model=shared.torch_model(target.name, config.trust_source)
        if any(b.SPEC.torch_module for b in builders)
        else None,
    )


def _source_config(run: RunManifest, target: str, trust: bool) -> ModelConfig:
    """The config rebuilding the run's PyTorch model; code the folder names runs only with ``trust``."""
    from onnx_pipeline.sources import model_config_from_source
    from onnx_pipeline.sources.loading import code_description

    if run.source is None:
        raise InputError(f"target '{target}' needs the PyTorch model, and the run folder does not say which: re-export")
    if run.source.runs_code and not trust:
        raise InputError(
            f"target '{target}' rebuilds the run's PyTorch model, which comes from {code_description(run.source)}: "
            "pass --trust-source if you trust where this folder came from"
        )
    return model_config_from_source(run.source, tuple(run.input_shape) or None, trust=trust)


def _run_builders(
    ctx: BuildContext,
    builders: Sequence[ArtifactBuilder],
    hasher: FileHasher,
    shared: SharedInputs,
    progress: Callable[[str], None] | None,
) -> list[ArtifactResult]:
    results: dict[str, ArtifactResult] = {}
    for builder in builders:
        if progress is not None:
            progress(f"bundle {ctx.target.name}: {builder.SPEC.kind}")
        start = time.perf_counter()
        try:
            result = builder.build(dataclasses.replace(ctx, built=dict(results)))
        except BundleError as exc:
            raise BundleError(f"{builder.SPEC.kind}: {exc.message}", result=exc.result) from None
        finally:
            shared.release()
        total = round(time.perf_counter() - start, 3)
        results[builder.SPEC.kind] = dataclasses.replace(result, timings={**result.timings, "total": total})
        hasher.add_known(result.hashes)
        hasher.hash_new(skip=(".work",))  # in a second thread, while the next builder works
    return list(results.values())


def _write_heldout(folder: Path, ctx: BuildContext) -> None:
    (folder / "fidelity").mkdir(exist_ok=True)
    arrays: dict[str, Any] = {"inputs": ctx.data.heldout}
    arrays.update({f"reference_{i}": r for i, r in enumerate(ctx.reference)})
    np.savez_compressed(folder / HELDOUT_FILE, **arrays)


def _default_model(builders: Sequence[ArtifactBuilder], results: Sequence[ArtifactResult]) -> str | None:
    """The model a runtime loads by default: the one of the most preferred kind (the fastest the target carries)."""
    rank = {b.SPEC.kind: b.SPEC.default_rank for b in builders}
    ranked = [(rank[r.kind], m.file) for r in results for m in r.models if rank[r.kind] is not None]
    return min(ranked)[1] if ranked else None


def _manifest(
    target: HardwareTarget, run: RunManifest, ctx: BuildContext, result: BundleResult, default: str | None
) -> BundleManifest:
    def io(entries: Sequence[Any]) -> tuple[Any, ...]:
        if ctx.dynamic_batch:
            return tuple(entries)
        return tuple(dataclasses.replace(e, shape=(1, *e.shape[1:])) for e in entries)

    return BundleManifest(
        inputs=io(run.inputs),
        outputs=io(run.outputs),
        dynamic_batch=ctx.dynamic_batch,
        task=run.task,
        preprocessing=run.preprocessing,
        labels=run.labels,
        versions=tool_versions(),
        timings=result.timings,
        files=result.files,
        target=TargetInfo(
            name=target.name,
            description=target.description,
            profile=target.source.name,
            artifacts=target.artifacts,
            batch=target.batch,
            opset={"min": target.opset.min, "max": target.opset.max},
            offline_optimization=target.session.offline_optimization,
        ),
        models=tuple(m.record() for m in result.models),
        default_model=default,
        # options as onnxruntime takes them (strings), ready for InferenceSession(providers=...)
        execution_providers=tuple({"name": n, "options": o} for n, o in target.providers),
        # read by runtime.session.SessionSettings.from_dict on the device
        session_options={
            "graph_optimization_level": target.session.graph_optimization_level,
            "intra_op_num_threads": target.session.intra_op_num_threads,
            "config_entries": dict(target.session.config_entries),
        },
        precisions=tuple(sorted({m.precision for m in result.models})),
        calibration=result.calibration,
        heldout=result.heldout,
        artifacts=result.artifacts,
        run={
            "model_file": run.model_file,
            # the run manifest holds it, checked when the run folder was read
            "model_sha256": run.files[run.model_file],
            "source": run.source,
            "opset": run.opset,
        },
    )


__all__ = ["BundleConfig", "BundleData", "BundleResult", "SharedInputs", "build_bundle", "fidelity_summary"]
