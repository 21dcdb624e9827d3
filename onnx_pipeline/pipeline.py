"""Runs the steps in order, passes the run report along, prints nothing.

``run_export``, ``run_verify`` and ``run_bundle`` are what the API (and through it the CLI) calls;
each returns a ``RunReport`` or raises a ``PipelineError`` whose ``result`` is that report.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_pipeline.artifacts import builders_for
from onnx_pipeline.config import BundleConfig, ModelConfig, PipelineConfig, VerifyConfig
from onnx_pipeline.errors import BundleError, InputError, IntegrityError, PipelineError, VerificationError
from onnx_pipeline.files import atomic_output_dir, to_jsonable
from onnx_pipeline.manifest import (
    BUNDLE_SCHEMAS,
    MANIFEST,
    RUN_UNLISTED,
    RunManifest,
    TensorSpec,
    hash_folder,
    read_manifest,
)
from onnx_pipeline.onnxfile import PROTOBUF_LIMIT, describe_model, external_data_files, inline_external_data, load_onnx
from onnx_pipeline.pytorch_stage import References, TorchStage, call_torch, localize_stage, reference_stage, torch_stage
from onnx_pipeline.report import RunReport, reported, tool_versions
from onnx_pipeline.report_html import write_report
from onnx_pipeline.sources import model_config_from_source
from onnx_pipeline.steps.bundle import BundleResult, SharedInputs, build_bundle
from onnx_pipeline.steps.check import check_model
from onnx_pipeline.steps.simplify import SimplifyResult, simplify_model
from onnx_pipeline.steps.verify import ParityResult, SampleSet, failure_message, verify_parity
from onnx_pipeline.steps.verify_bundle import verify_bundle
from onnx_pipeline.targets import HardwareTarget, load_target

if TYPE_CHECKING:
    from onnx_pipeline.compare.localize import Localization

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
RAW_FILE = "model.exported.onnx"

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def _timed(report: RunReport, step: str, progress: Progress, fn: Callable[[], Any]) -> Any:
    progress(step)
    start = time.perf_counter()
    with reported(report, step):
        result = fn()
    report.record(step, result, time.perf_counter() - start)
    return result


def load_targets(names: tuple[str, ...] | list[str]) -> list[HardwareTarget]:
    """Load and check targets (profiles and their artifact kinds) before any work."""
    targets = [load_target(n) for n in names]
    for target in targets:
        builders_for(target)
    return targets


# --------------------------------------------------------------------------- export


def run_export(config: PipelineConfig, *, progress: Progress = _noop) -> RunReport:
    """Export, check, simplify and verify a model into the run folder ``config.output``, then its bundles.

    Raises a ``PipelineError`` (its ``result`` is the report) when a step fails; the run
    folder is then not written.
    """
    report = RunReport(command="export", output=config.output, config=to_jsonable(config))
    report.config.pop("provenance", None)
    report.provenance = dict(config.provenance)
    with reported(report):
        targets = load_targets(config.targets)  # a bad name fails before any work
        with atomic_output_dir(config.output, force=config.force) as work:
            manifest = _export_into(work, config, report, progress)
            bundle_config = BundleConfig(
                calibration_images=config.calibration_images,
                seed=config.verify.seed,
                force=True,
                fallback=config.fallback,
            )
            # The targets share the model, the data and the reference outputs (the manifest was just written).
            # a target that needs the PyTorch model (torchscript) rebuilds the one just exported, as exported
            shared = SharedInputs(work, run=manifest, model=config.model)
            for target in targets:
                _timed_bundle(work, target, bundle_config, report, progress, shared, final_dir=config.output)
            del shared
            report.status = "passed"
            report.timings["total"] = round(report.seconds, 3)
            dataclasses.replace(manifest, timings=dict(report.timings)).write(work)
            _write_report(work, report)
            write_report(work, check=False)  # report.html: the files were hashed as they were written
    return report


def _write_report(folder: Path, report: RunReport) -> None:
    from onnx_pipeline.files import write_json

    write_json(folder / "report.json", report.to_dict())


def _export_into(work: Path, config: PipelineConfig, report: RunReport, progress: Progress) -> RunManifest:
    raw = work / RAW_FILE
    progress("export")
    # While the PyTorch process works, import what this process needs next: onnxsim alone
    # takes ~2 s to import, time that would otherwise add to the run.
    prefetch = threading.Thread(target=_prefetch_imports, args=(config.simplify.backend,), daemon=True)
    if config.isolate_torch:
        prefetch.start()
    stage: TorchStage = call_torch(config.isolate_torch, torch_stage, config, raw)
    if prefetch.is_alive():
        prefetch.join()
    report.timings.update(stage.timings)
    report.steps["load"] = {"source": stage.source, "input_shape": list(stage.input_shape)}
    report.record("export", stage.export)
    report.findings += stage.findings
    _timed(report, "check", progress, lambda: check_model(raw))
    sample = stage.samples[0].data if stage.samples else None
    simplified: SimplifyResult = _timed(
        report, "simplify", progress, lambda: simplify_model(raw, work / MODEL_FILE, config.simplify, sample=sample)
    )
    if simplified.applied:
        _timed(report, "check_simplified", progress, lambda: check_model(work / MODEL_FILE))
    keep_external = config.export.external_data is True or (
        config.export.external_data is None and stage.param_bytes > 0.9 * PROTOBUF_LIMIT
    )
    verification, known_hashes = _verify_and_finalize(work, config, stage, report, progress, keep_external)
    info = describe_model(work / MODEL_FILE)
    data = work / (MODEL_FILE + ".data")
    manifest = RunManifest(
        inputs=tuple(TensorSpec(t.name, t.shape, t.dtype) for t in info.inputs),
        outputs=tuple(TensorSpec(t.name, t.shape, t.dtype) for t in info.outputs),
        dynamic_batch=stage.export.dynamic_batch,
        task=stage.task,
        preprocessing=stage.preprocessing,
        labels=tuple(stage.labels) if stage.labels else None,
        versions=tool_versions(),
        timings=dict(report.timings),
        files=hash_folder(work, exclude=RUN_UNLISTED, known=known_hashes),
        model_file=MODEL_FILE,
        external_data=data.name if data.exists() else None,
        opset=info.opset,
        ir_version=info.ir_version,
        input_shape=tuple(stage.input_shape),
        source=model_source(stage.source),
        exporter={
            "requested": stage.export.requested,
            "used": stage.export.used,
            "fallbacks": stage.export.fallbacks,
            "findings": stage.export.findings,
        },
        simplify=to_jsonable(simplified),
        verification=to_jsonable(verification) if verification is not None else None,
    )
    manifest.write(work)
    return RunManifest.read(work, check=False)


def model_source(source: dict[str, Any]) -> Any:
    """The typed ``ModelSource`` of a loaded model's ``source`` dict."""
    from onnx_pipeline.manifest import ModelSource

    return ModelSource(**source)


def _verify_and_finalize(
    work: Path, config: PipelineConfig, stage: TorchStage, report: RunReport, progress: Progress, keep_external: bool
) -> tuple[Any, dict[str, str]]:
    """Verify the model as it stands, weights still external, while the final single file is written.

    onnxruntime then maps the weights instead of parsing a 500 MB protobuf. Writing the final single
    file only re-encodes the same graph and tensor bytes (tests hold the round trip), so it runs in a
    thread while onnxruntime verifies; the file replaces the working one once both are done.
    """
    model_path = work / MODEL_FILE
    locations = external_data_files(model_path)
    inline = None
    verification = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        if locations and not keep_external:
            inline = pool.submit(inline_external_data, model_path, model_path.with_name(MODEL_FILE + ".inline"))
        if stage.samples is not None and stage.references is not None:
            model_config = dataclasses.replace(config.model, input_shape=tuple(stage.input_shape))
            verification = _timed(
                report,
                "verify",
                progress,
                lambda: verify_and_localize(
                    model_path, model_config, stage, config.verify, stage.task, isolate=config.isolate_torch
                ),
            )
        progress("finalize")
        start = time.perf_counter()
        known: dict[str, str] = {}
        if inline is not None:
            known[MODEL_FILE] = inline.result()
            for location in locations:
                (work / location).unlink(missing_ok=True)
            model_path.with_name(MODEL_FILE + ".inline").replace(model_path)
        elif keep_external:
            _gather_external_data(model_path, locations)
    report.timings["finalize"] = round(time.perf_counter() - start, 3)
    return verification, known


def _prefetch_imports(backend: str) -> None:
    import importlib

    for name in ("onnx", "onnxruntime", backend):
        try:
            importlib.import_module(name)
        except ImportError:  # reported where the module is really used
            return


def _external_name(path: Path) -> str | None:
    data = path.with_name(path.name + ".data")
    return data.name if data.exists() else None


def _gather_external_data(path: Path, locations: set[str]) -> None:
    """Put every external tensor of ``path`` in one file named after it (``model.onnx.data``), relative paths."""
    import onnx

    target = path.name + ".data"
    if locations == {target}:
        return
    if len(locations) == 1:  # one data file under another name: rename it, rewrite the references
        model = load_onnx(path, load_external_data=False)
        (path.parent / locations.pop()).replace(path.parent / target)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = target
        onnx.save_model(model, str(path))
        return
    # inline weights (a small model asked for --external-data) or several data files: let onnx
    # gather them; onnx appends to an existing data file, so remove the old ones first
    model = onnx.load(str(path))
    for location in locations:
        (path.parent / location).unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=target)


# --------------------------------------------------------------------------- bundles


def _timed_bundle(
    run_dir: Path,
    target: HardwareTarget,
    config: BundleConfig,
    report: RunReport,
    progress: Progress,
    shared: SharedInputs,
    *,
    final_dir: Path | None = None,
) -> BundleResult:
    progress(f"bundle {target.name}")
    start = time.perf_counter()
    bundles = report.steps.setdefault("bundles", {})
    try:
        result = build_bundle(run_dir, target, config, shared=shared, progress=progress)
    except BundleError as exc:
        if exc.result is not None:
            bundles[target.name] = to_jsonable(exc.result)
        raise
    summary = to_jsonable(result)
    if final_dir is not None:  # built inside the run's temporary folder: report where it will be
        for key in ("bundle_dir", "summary"):
            summary[key] = summary[key].replace(str(run_dir), str(final_dir))
    bundles[target.name] = summary
    report.timings[f"bundle:{target.name}"] = round(time.perf_counter() - start, 3)
    return result


def run_bundle(run_dir: Path, targets: list[str], config: BundleConfig, *, progress: Progress = _noop) -> RunReport:
    """Build ``run_dir/bundles/<target>/`` for each target (``onnx-pipeline bundle``)."""
    report = RunReport(command="bundle", output=Path(run_dir))
    with reported(report):
        if not Path(run_dir).is_dir():
            raise InputError(f"{run_dir} is not a folder: give a run folder written by onnx-pipeline export")
        loaded = load_targets(targets)
        if not loaded:
            raise InputError("give at least one --target (onnx-pipeline targets lists them)")
        shared = SharedInputs(Path(run_dir))
        for target in loaded:
            _timed_bundle(Path(run_dir), target, config, report, progress, shared)
    return report


# --------------------------------------------------------------------------- verify


@dataclasses.dataclass(frozen=True)
class VerifyRequest:
    """What ``onnx-pipeline verify`` was asked: a run folder or bundle, or an ONNX file and a model.

    ``model`` names the PyTorch model to compare with; without it, a run folder's own source is rebuilt,
    which runs no code from the folder unless ``trust_source`` (the user's explicit opt-in).
    """

    path: Path
    model: ModelConfig | None = None
    verify: VerifyConfig = dataclasses.field(default_factory=VerifyConfig)
    isolate_torch: bool = False
    trust_source: bool = False


def run_verify(request: VerifyRequest, *, progress: Progress = _noop) -> RunReport:
    """Verify a bundle (hashes, artifacts, fidelity), a run folder (hashes, then parity) or any ONNX file."""
    report = RunReport(command="verify", output=request.path)
    path = Path(request.path)
    with reported(report, "verify"):
        if path.is_dir() and _is_bundle(path):
            progress("verify bundle")
            start = time.perf_counter()
            with reported(report, "bundle"):
                bundle = verify_bundle(path)
            report.record("bundle", bundle, time.perf_counter() - start)
            return report
        if path.is_dir():
            onnx_path, model_config, manifest = _from_run_folder(path, request, report)
            preprocessing, task = manifest.preprocessing, manifest.task
        else:
            if request.model is None:
                raise InputError(f"{path} is a file: say which PyTorch model it came from with --model (and --weights)")
            load_onnx(path, load_external_data=False)
            missing = sorted(loc for loc in external_data_files(path) if not (path.parent / loc).is_file())
            if missing:
                raise InputError(f"{path.name} keeps its weights in {', '.join(missing)}, which is missing beside it")
            onnx_path, model_config = path, request.model
            preprocessing, task = None, None  # the model's own, found by reference_stage
        _verify_parity(onnx_path, model_config, preprocessing, task, request, report, progress)
    return report


def _verify_parity(
    onnx_path: Path,
    model_config: ModelConfig,
    preprocessing: Any,
    task: str | None,
    request: VerifyRequest,
    report: RunReport,
    progress: Progress,
) -> None:
    info = describe_model(onnx_path)
    dynamic = bool(info.inputs and isinstance(info.inputs[0].shape[0], str))
    if model_config.input_shape is None and info.inputs and all(isinstance(d, int) for d in info.inputs[0].shape[1:]):
        shape = (1, *info.inputs[0].shape[1:]) if dynamic else tuple(info.inputs[0].shape)
        model_config = dataclasses.replace(model_config, input_shape=tuple(int(d) for d in shape))
    progress("reference")
    references = call_torch(
        request.isolate_torch, reference_stage, model_config, preprocessing, request.verify, dynamic
    )
    report.steps["load"] = {"source": references.source, "input_shape": list(references.input_shape)}
    report.timings.update(references.timings)
    report.findings += references.findings
    _timed(
        report,
        "verify",
        progress,
        lambda: verify_and_localize(
            onnx_path, model_config, references, request.verify, task or references.task, isolate=request.isolate_torch
        ),
    )


#: samples the localisation runs on (from the sample set where the outputs differ most)
LOCALIZE_SAMPLES = 2


def verify_and_localize(
    onnx_path: Path,
    model_config: ModelConfig,
    references: TorchStage | References,
    config: VerifyConfig,
    task: str,
    *,
    isolate: bool,
) -> ParityResult:
    """``verify_parity``, then the first divergence when it fails (or with ``config.localize``).

    The localisation needs the PyTorch model: it runs on the PyTorch side (``localize_stage``, in the
    worker process when ``isolate``), which rebuilds the model; this process never imports torch.
    """
    assert references.samples is not None and references.references is not None
    samples = references.samples
    try:
        result = verify_parity(
            onnx_path,
            samples,
            references.references,
            config,
            classification=task == "classification",
            exact=references.exact,
            float64_unavailable=references.float64_unavailable,
        )
    except VerificationError as exc:
        failed = exc.result
        if (
            not isinstance(failed, ParityResult)
            or not failed.outputs
            or not (config.localize or config.localize_on_failure)
        ):
            raise
        located = dataclasses.replace(
            failed, localization=_localize(onnx_path, model_config, failed, samples, config, isolate)
        )
        raise VerificationError(failure_message(located), result=located) from None
    if config.localize:
        result = dataclasses.replace(
            result, localization=_localize(onnx_path, model_config, result, samples, config, isolate)
        )
    return result


def _localize(
    onnx_path: Path,
    model_config: ModelConfig,
    result: ParityResult,
    samples: list[SampleSet],
    config: VerifyConfig,
    isolate: bool,
) -> Localization:
    """Localise on the sample set where the (failing) outputs differ most; a failure to localise is reported."""
    from onnx_pipeline.compare.localize import unavailable

    outputs = [o for o in result.outputs if not o.passed] or result.outputs
    worst: dict[str, float] = {}
    for output in outputs:
        figures = output.per_sample_set_ratio or output.per_sample_set_max_abs
        for name, value in figures.items():
            worst[name] = max(worst.get(name, 0.0), value)
    chosen = next(s for s in samples if s.name == max(worst, key=lambda n: worst[n])) if worst else samples[0]
    dynamic = len({s.data.shape[0] for s in samples}) > 1
    if dynamic and len(chosen.data) > LOCALIZE_SAMPLES:
        chosen = SampleSet(chosen.name, chosen.data[:LOCALIZE_SAMPLES], chosen.origin)
    try:
        return call_torch(isolate, localize_stage, model_config, onnx_path, chosen, config)  # type: ignore[no-any-return]
    except PipelineError as exc:
        return unavailable(f"localisation failed: {exc.message}", chosen.name, len(chosen.data), result.rule)


def _is_bundle(folder: Path) -> bool:
    from onnx_pipeline.files import read_json

    if not (folder / MANIFEST).is_file():
        return False
    data = read_json(folder / MANIFEST)
    return isinstance(data, dict) and data.get("schema") in BUNDLE_SCHEMAS


def _from_run_folder(folder: Path, request: VerifyRequest, report: RunReport) -> tuple[Path, ModelConfig, RunManifest]:
    try:
        manifest = read_manifest(folder)
    except IntegrityError as exc:
        report.steps["hashes"] = {"problems": [exc.message]}
        raise VerificationError(f"the run folder fails its integrity check: {exc.message}") from None
    if not isinstance(manifest, RunManifest):
        raise InputError(f"{folder}/{MANIFEST} is not a run manifest: give a folder made by export")
    report.steps["hashes"] = {"files": len(manifest.files), "problems": [], "digest": manifest.digest}
    if request.model is not None:
        model_config = request.model
    else:
        if manifest.source is None:
            raise InputError(f"{folder}/{MANIFEST} does not say which model it came from: give --model and --weights")
        input_shape = manifest.input_shape or None
        model_config = model_config_from_source(manifest.source, input_shape, trust=request.trust_source)
    return manifest.model_path, model_config, manifest
