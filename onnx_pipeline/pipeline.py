"""Runs the steps in order, passes the run report along, prints nothing."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from onnx_pipeline.config import PROTOBUF_LIMIT_BYTES, ModelConfig, PipelineConfig, VerifyConfig
from onnx_pipeline.errors import InputError, PipelineError, StepError, VerificationError
from onnx_pipeline.files import atomic_output_dir, hash_tree, read_json, sha256_file, write_json
from onnx_pipeline.onnxfile import describe_model, external_data_files, inline_external_data, load_onnx
from onnx_pipeline.report import SCHEMA, RunReport, tool_versions
from onnx_pipeline.runtime.preprocess import PreprocessSpec
from onnx_pipeline.sources import load_model, resolve_spec
from onnx_pipeline.steps.bundle import (
    BUNDLE_SCHEMA,
    OPSET_REWRITING,
    BundleConfig,
    BundleResult,
    build_bundle,
    verify_bundle,
)
from onnx_pipeline.steps.check import check_model
from onnx_pipeline.steps.export import ExportResult, export_model
from onnx_pipeline.steps.simplify import simplify_model
from onnx_pipeline.steps.verify import SampleSet, compute_reference, make_verification_inputs, verify_parity
from onnx_pipeline.targets import HardwareTarget, load_target

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
RAW_FILE = "model.exported.onnx"
#: above this, weights go to external data while the pipeline works (memory), see _export_into
_WORK_EXTERNAL_BYTES = 64 << 20

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def _config_dict(config: PipelineConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data.pop("provenance", None)
    return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _timed(report: RunReport, step: str, progress: Progress, fn: Callable[[], Any]) -> Any:
    progress(step)
    start = time.perf_counter()
    result = fn()
    report.record(step, result, time.perf_counter() - start)
    return result


def run_export(config: PipelineConfig, *, progress: Progress = _noop) -> RunReport:
    """Export, check, simplify and verify a model into the run folder ``config.output``.

    Raises a ``PipelineError`` (its ``result`` is the report) when a step fails; the run
    folder is then not written.
    """
    report = RunReport(command="export", output=config.output, config=_config_dict(config))
    report.provenance = dict(config.provenance)
    targets = [load_target(t) for t in config.targets]  # a bad name fails before any work
    try:
        with atomic_output_dir(config.output, force=config.force) as work:
            _export_into(work, config, report, progress)
            for target in targets:
                _timed_bundle(work, target, _bundle_config(config), report, progress, final_dir=config.output)
            report.status = "passed"
            report.timings["total"] = round(report.seconds, 3)
            manifest = read_json(work / "manifest.json")
            manifest["timings"] = report.timings
            write_json(work / "manifest.json", manifest)
            write_json(work / "report.json", report.to_dict())
    except PipelineError as exc:
        report.status = "failed"
        report.error = exc.message
        if exc.result is not None and hasattr(exc.result, "to_dict"):
            report.steps.setdefault("verify", exc.result.to_dict())
        exc.result = report
        raise
    return report


@dataclasses.dataclass(frozen=True)
class TorchStage:
    """What the PyTorch side hands over: the exported file, references, and the model's metadata."""

    source: dict[str, Any]
    labels: list[str] | None
    input_shape: tuple[int, ...]
    task: str
    preprocessing: PreprocessSpec | None
    param_bytes: int
    export: ExportResult
    samples: list[SampleSet] | None
    references: list[list[Any]] | None
    timings: dict[str, float]
    findings: list[str]


def torch_stage(config: PipelineConfig, raw: Path) -> TorchStage:
    """Load the model, compute the verification references, export to ``raw``.

    Everything that needs torch happens here, so that it can run in a process of its own
    (``PipelineConfig.isolate_torch``): torch and the exporter hold over 1.5 GB for VGG16 that
    no ``del`` gives back, and onnxruntime should not have to load its copy on top of that.
    """
    import torch

    timings: dict[str, float] = {}
    start = time.perf_counter()
    spec = resolve_spec(config.model.model)
    loaded = load_model(config.model, spec)
    timings["load"] = round(time.perf_counter() - start, 3)
    if config.export.dynamic_batch and loaded.input_shape[0] != 1:
        raise InputError("with a dynamic batch the input shape's batch axis is free: give batch 1 or --static-batch")
    samples = references = None
    if config.run_verify:
        start = time.perf_counter()
        samples = make_verification_inputs(
            loaded.input_shape, spec.preprocessing, config.verify, dynamic_batch=config.export.dynamic_batch
        )
        references = compute_reference(loaded.module, samples)
        timings["reference"] = round(time.perf_counter() - start, 3)
    # torch.export specialises a dimension of size 1, so a dynamic batch is exported at batch 2.
    batch = 2 if config.export.dynamic_batch else loaded.input_shape[0]
    example = torch.zeros((batch, *loaded.input_shape[1:]))
    param_bytes = sum(t.numel() * t.element_size() for t in loaded.module.state_dict().values())
    export_cfg = config.export
    if export_cfg.external_data is None and param_bytes > _WORK_EXTERNAL_BYTES:
        export_cfg = dataclasses.replace(export_cfg, external_data=True)
    exported = export_model(loaded.module, example, raw, export_cfg)
    timings["export"] = round(exported.seconds, 3)
    return TorchStage(
        source=loaded.source,
        labels=loaded.labels,
        input_shape=loaded.input_shape,
        task=spec.task,
        preprocessing=spec.preprocessing,
        param_bytes=param_bytes,
        export=exported,
        samples=samples,
        references=references,
        timings=timings,
        findings=loaded.findings + exported.findings,
    )


def _call_torch(isolate: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` here, or in a fresh process (spawned: torch is not fork-safe) when ``isolate``."""
    if not isolate:
        return fn(*args)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(fn, *args).result()
    except BrokenProcessPool:
        raise StepError(
            "the PyTorch process died (out of memory, or a crash in torch): run again with --no-isolate --debug "
            "to see where"
        ) from None


def _export_into(work: Path, config: PipelineConfig, report: RunReport, progress: Progress) -> None:
    raw = work / RAW_FILE
    progress("export")
    # While the PyTorch process works, import what this process needs next: onnxsim alone
    # takes ~2 s to import, time that would otherwise add to the run.
    prefetch = threading.Thread(target=_prefetch_imports, args=(config.simplify.backend,), daemon=True)
    if config.isolate_torch:
        prefetch.start()
    stage: TorchStage = _call_torch(config.isolate_torch, torch_stage, config, raw)
    if prefetch.is_alive():
        prefetch.join()
    for step, seconds in stage.timings.items():
        report.timings[step] = seconds
    report.steps["load"] = {"source": stage.source, "input_shape": list(stage.input_shape)}
    report.steps["export"] = stage.export.to_dict()
    report.findings += stage.findings
    _timed(report, "check", progress, lambda: check_model(raw))
    sample = stage.samples[0].data if stage.samples else None
    simplified = _timed(
        report, "simplify", progress, lambda: simplify_model(raw, work / MODEL_FILE, config.simplify, sample=sample)
    )
    if simplified.applied:
        _timed(report, "check_simplified", progress, lambda: check_model(work / MODEL_FILE))
    keep_external = config.export.external_data is True or (
        config.export.external_data is None and stage.param_bytes > 0.9 * PROTOBUF_LIMIT_BYTES
    )
    # Verify the model as it stands, weights still external: onnxruntime then maps them instead
    # of parsing a 500 MB protobuf. Writing the final single file only re-encodes the same graph
    # and tensor bytes (tests/test_onnxfile.py holds the round trip), so it runs in a thread while
    # onnxruntime verifies; the file replaces the working one once both are done.
    model_path = work / MODEL_FILE
    locations = external_data_files(model_path)
    inline = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        if locations and not keep_external:
            inline = pool.submit(inline_external_data, model_path, model_path.with_name(MODEL_FILE + ".inline"))
        verification = None
        if stage.samples is not None and stage.references is not None:
            samples, references = stage.samples, stage.references
            try:
                verification = _timed(
                    report,
                    "verify",
                    progress,
                    lambda: verify_parity(
                        model_path, samples, references, config.verify, classification=stage.task == "classification"
                    ),
                )
            except VerificationError as exc:
                if exc.result is not None:
                    report.steps["verify"] = exc.result.to_dict()
                raise
        progress("finalize")
        start = time.perf_counter()
        if inline is not None:
            digest = inline.result()
            for location in locations:
                (work / location).unlink(missing_ok=True)
            model_path.with_name(MODEL_FILE + ".inline").replace(model_path)
            known_hashes = {MODEL_FILE: digest}
        else:
            if keep_external:
                _gather_external_data(model_path, locations)
            known_hashes = {}
    report.timings["finalize"] = round(time.perf_counter() - start, 3)
    info = describe_model(work / MODEL_FILE)
    manifest = {
        "schema": SCHEMA,
        "model_file": MODEL_FILE,
        "external_data": _external_name(work / MODEL_FILE),
        "inputs": [t.to_dict() for t in info.inputs],
        "outputs": [t.to_dict() for t in info.outputs],
        "dynamic_batch": stage.export.dynamic_batch,
        "opset": info.opset,
        "ir_version": info.ir_version,
        "task": stage.task,
        "input_shape": list(stage.input_shape),
        "preprocessing": stage.preprocessing.to_dict() if stage.preprocessing else None,
        "labels": stage.labels,
        "source": stage.source,
        "exporter": {
            "requested": stage.export.requested,
            "used": stage.export.used,
            "fallbacks": stage.export.fallbacks,
            "findings": stage.export.findings,
        },
        "simplify": simplified.to_dict(),
        "verification": verification.to_dict() if verification else None,
        "versions": tool_versions(),
        "timings": report.timings,
        "files": {},
    }
    write_json(work / "report.json", {})  # placeholder so the file list is complete
    manifest["files"] = hash_tree(work, exclude=("manifest.json", "report.json"), known=known_hashes)
    write_json(work / "manifest.json", manifest)


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


def targets_layer(names: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """The hardware-target layer of the config: what the targets agree on (batch mode, opset).

    Targets whose builders rewrite the model themselves (Vitis AI: static batch 1, opset 17) do
    not constrain the export; a key the others disagree on is left to the model's default.
    """
    layer: dict[str, dict[str, Any]] = {}
    conflicts: set[tuple[str, str]] = set()
    for target in (load_target(n) for n in names):
        if set(target.artifacts) <= OPSET_REWRITING:
            continue
        for section, values in target.pipeline_defaults().items():
            for key, value in values.items():
                if key in layer.get(section, {}) and layer[section][key] != value:
                    conflicts.add((section, key))
                layer.setdefault(section, {})[key] = value
    for section, key in conflicts:
        del layer[section][key]
    return layer


def _bundle_config(config: PipelineConfig) -> BundleConfig:
    return BundleConfig(calibration_images=config.calibration_images, seed=config.verify.seed, force=True)


def _timed_bundle(
    run_dir: Path,
    target: HardwareTarget,
    config: BundleConfig,
    report: RunReport,
    progress: Progress,
    *,
    final_dir: Path | None = None,
) -> BundleResult:
    progress(f"bundle {target.name}")
    start = time.perf_counter()
    try:
        result = build_bundle(run_dir, target, config)
    except PipelineError as exc:
        if exc.result is not None and hasattr(exc.result, "to_dict"):
            report.steps.setdefault("bundles", {})[target.name] = exc.result.to_dict()
        raise
    summary = result.to_dict()
    if final_dir is not None:  # built inside the run's temporary folder: report where it will be
        for key in ("bundle_dir", "summary"):
            summary[key] = summary[key].replace(str(run_dir), str(final_dir))
    report.steps.setdefault("bundles", {})[target.name] = summary
    report.timings[f"bundle:{target.name}"] = round(time.perf_counter() - start, 3)
    return result


def run_bundle(run_dir: Path, targets: list[str], config: BundleConfig, *, progress: Progress = _noop) -> RunReport:
    """Build ``run_dir/bundles/<target>/`` for each target (``onnx-pipeline bundle``)."""
    report = RunReport(command="bundle", output=Path(run_dir))
    try:
        if not Path(run_dir).is_dir():
            raise InputError(f"{run_dir} is not a folder: give a run folder written by onnx-pipeline export")
        loaded = [load_target(t) for t in targets]
        if not loaded:
            raise InputError("give at least one --target (onnx-pipeline targets lists them)")
        for target in loaded:
            _timed_bundle(Path(run_dir), target, config, report, progress)
        report.status = "passed"
    except PipelineError as exc:
        report.status = "failed"
        report.error = exc.message
        exc.result = report
        raise
    return report


# --------------------------------------------------------------------------- verify


@dataclasses.dataclass(frozen=True)
class VerifyRequest:
    """What ``onnx-pipeline verify`` was asked: a run folder, or an ONNX file and a model."""

    path: Path
    model: ModelConfig | None = None
    verify: VerifyConfig = dataclasses.field(default_factory=VerifyConfig)
    isolate_torch: bool = False


@dataclasses.dataclass(frozen=True)
class References:
    """PyTorch's outputs on the verification inputs, and where the model came from."""

    source: dict[str, Any]
    input_shape: tuple[int, ...]
    task: str
    samples: list[SampleSet]
    references: list[list[Any]]
    timings: dict[str, float]
    findings: list[str]


def reference_stage(
    model_config: ModelConfig, preprocessing: PreprocessSpec | None, verify: VerifyConfig, dynamic_batch: bool
) -> References:
    """Load the PyTorch model and compute its outputs on the verification inputs."""
    start = time.perf_counter()
    loaded = load_model(model_config)
    load_s = time.perf_counter() - start
    preprocessing = preprocessing or loaded.spec.preprocessing
    samples = make_verification_inputs(loaded.input_shape, preprocessing, verify, dynamic_batch=dynamic_batch)
    references = compute_reference(loaded.module, samples)
    return References(
        source=loaded.source,
        input_shape=loaded.input_shape,
        task=loaded.spec.task,
        samples=samples,
        references=references,
        timings={"load": round(load_s, 3), "reference": round(time.perf_counter() - start - load_s, 3)},
        findings=loaded.findings,
    )


def run_verify(request: VerifyRequest, *, progress: Progress = _noop) -> RunReport:
    """Verify a run folder (hashes, then parity) or any ONNX file against a PyTorch model."""
    report = RunReport(command="verify", output=request.path)
    path = Path(request.path)
    try:
        if path.is_dir() and _schema(path) == BUNDLE_SCHEMA:
            progress("verify bundle")
            start = time.perf_counter()
            try:
                bundle = verify_bundle(path)
            except PipelineError as exc:
                if exc.result is not None and hasattr(exc.result, "to_dict"):
                    report.steps["bundle"] = exc.result.to_dict()
                raise
            report.record("bundle", bundle, time.perf_counter() - start)
            report.status = "passed"
            return report
        if path.is_dir():
            onnx_path, model_config, preprocessing, task = _from_run_folder(path, request, report)
        else:
            if request.model is None:
                raise InputError(f"{path} is a file: say which PyTorch model it came from with --model (and --weights)")
            load_onnx(path, load_external_data=False)
            onnx_path, model_config = path, request.model
            preprocessing, task = None, None  # the model's own, found by reference_stage
        info = describe_model(onnx_path)
        dynamic = bool(info.inputs and isinstance(info.inputs[0].shape[0], str))
        if (
            model_config.input_shape is None
            and info.inputs
            and all(isinstance(d, int) for d in info.inputs[0].shape[1:])
        ):
            shape = (1, *info.inputs[0].shape[1:]) if dynamic else tuple(info.inputs[0].shape)
            model_config = dataclasses.replace(model_config, input_shape=tuple(int(d) for d in shape))
        progress("reference")
        references = _call_torch(
            request.isolate_torch, reference_stage, model_config, preprocessing, request.verify, dynamic
        )
        report.steps["load"] = {"source": references.source, "input_shape": list(references.input_shape)}
        report.timings.update(references.timings)
        report.findings += references.findings
        samples = references.samples
        task = task or references.task
        _timed(
            report,
            "verify",
            progress,
            lambda: verify_parity(
                onnx_path, samples, references.references, request.verify, classification=task == "classification"
            ),
        )
        report.status = "passed"
    except PipelineError as exc:
        report.status = "failed"
        report.error = exc.message
        if isinstance(exc, VerificationError) and exc.result is not None:
            report.steps["verify"] = exc.result.to_dict()
        exc.result = report
        raise
    return report


def model_config_from_source(
    source: dict[str, Any], input_shape: tuple[int, ...] | None, *, check_weights: bool = False
) -> ModelConfig:
    """The ModelConfig that rebuilds the PyTorch model a manifest's ``source`` describes."""
    weights = source.get("weights") or "random"
    if weights not in ("random", "imagenet", "embedded"):
        weights = source.get("weights_file") or weights
        expected = source.get("weights_sha256")
        if check_weights and expected and Path(weights).is_file() and sha256_file(Path(weights)) != expected:
            raise InputError(f"weights file {weights} changed since export: its sha256 differs from the manifest")
    return ModelConfig(
        model=str(source.get("location") if source.get("kind") in ("factory", "torchscript") else source["model"]),
        weights=weights,
        seed=int(source.get("seed", 0)),
        input_shape=input_shape,
        rescale_random=bool(source.get("rescaled_random", True)),
    )


def _schema(folder: Path) -> str | None:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    data = read_json(manifest)
    return data.get("schema") if isinstance(data, dict) else None


def _from_run_folder(
    folder: Path, request: VerifyRequest, report: RunReport
) -> tuple[Path, ModelConfig, PreprocessSpec | None, str | None]:
    manifest = read_json(folder / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise InputError(f"{folder}/manifest.json is not an onnx-pipeline run manifest: give a folder made by export")
    problems = []
    for rel, digest in manifest.get("files", {}).items():
        file = folder / rel
        if not file.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(file) != digest:
            problems.append(f"{rel} does not match its sha256 in the manifest")
    report.steps["hashes"] = {"files": len(manifest.get("files", {})), "problems": problems}
    if problems:
        raise VerificationError(f"the run folder was modified: {'; '.join(problems)}. Re-export it")
    if request.model is not None:
        model_config = request.model
    else:
        input_shape = tuple(manifest["input_shape"]) if manifest.get("input_shape") else None
        model_config = model_config_from_source(manifest["source"], input_shape, check_weights=True)
    prep = manifest.get("preprocessing")
    return (
        folder / manifest.get("model_file", MODEL_FILE),
        model_config,
        PreprocessSpec.from_dict(prep) if prep else None,
        str(manifest.get("task", "classification")),
    )


# --------------------------------------------------------------------------- bench


def eager_model_builder(bundle_dir: Path) -> Callable[[], Any] | None:
    """A zero-argument builder of the PyTorch model a bundle came from (the eager baseline), if known."""
    manifest = read_json(Path(bundle_dir) / "manifest.json")
    if not isinstance(manifest, dict):
        return None
    source = manifest.get("source") or (manifest.get("run") or {}).get("source")  # run folder or bundle
    if not isinstance(source, dict) or not source.get("model"):
        return None
    shape = None
    inputs = manifest.get("inputs") or []
    if inputs and all(isinstance(d, int) for d in inputs[0]["shape"][1:]):
        shape = (1, *inputs[0]["shape"][1:])
    config = model_config_from_source(source, shape)
    return lambda: load_model(config).module
