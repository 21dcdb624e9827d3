"""The bundle step: build a hardware bundle from a run folder, and verify a bundle on disk.

A bundle (``RUN/bundles/<target>/``) is built from the run folder alone (``model.onnx`` and
``manifest.json``) with onnx, onnxruntime and numpy. What goes in is decided by the target's
artifact kinds, never by its name:

- ``fp32-optimized``: ``model.fp32.onnx``, onnxruntime's graph optimizations applied offline at the
  profile's ``offline_optimization`` level (recorded in the manifest);
- ``ort``: ``model.fp32.ort`` (ORT format, for mobile/minimal builds) and ``required_operators.config``;
- ``int8-qdq``: ``model.int8.onnx``, static QDQ, calibrated on images (or synthetic data, marked
  ``"calibration": {"synthetic": true}``);
- ``fp16``: ``model.fp16.onnx``, fp16 inside, fp32 inputs and outputs;
- ``triton``: ``triton/<model>/1/model.onnx`` (the fp16 model) and ``triton/<model>/config.pbtxt``;
- ``vitis-ai``: the files of ``onnx_pipeline.vitis.bundle.write_vitis_artifacts`` (power-of-two XINT8 QDQ
  model, DPU report, board scripts), described under ``vitis`` in the manifest.

Every model is checked against the fp32 reference on held-out inputs (images not used for
calibration); the inputs and reference outputs are kept in ``fidelity/heldout.npz`` so that
``verify_bundle`` (and a device) can re-check the bundle without the run folder.

``manifest.json`` (schema ``onnx-pipeline/bundle/1``) keys: ``schema``, ``target`` (name,
description, profile, artifacts, batch, opset range), ``models`` (list of {file, kind, precision,
optimization_level, fidelity}), ``default_model`` (the file a runtime should load by default),
``inputs``, ``outputs``, ``dynamic_batch``, ``task``, ``preprocessing``, ``labels``,
``execution_providers`` (ordered [{name, options}], options as strings), ``session_options``
(graph_optimization_level, intra_op_num_threads, config_entries), ``precisions``, ``calibration``, ``heldout``,
``quantization``, ``fp16``, ``triton``, ``vitis``, ``run`` (the source run folder's model hash and source),
``versions``, ``timings``, ``files`` ({relative path: sha256} of every file but ``manifest.json``).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.bundling.fidelity import FidelityResult, judge
from onnx_pipeline.errors import BundleError, InputError, OutputExistsError
from onnx_pipeline.files import atomic_output_dir, hash_tree, read_json, sha256_file, write_json
from onnx_pipeline.runtime.preprocess import PreprocessSpec, list_images, load_batch
from onnx_pipeline.targets import ARTIFACT_PRECISION, FidelityThresholds, HardwareTarget

log = logging.getLogger(__name__)

BUNDLE_SCHEMA = "onnx-pipeline/bundle/1"
RUN_SCHEMA = "onnx-pipeline/run/1"
HELDOUT_FILE = "fidelity/heldout.npz"
#: artifact kinds in build order ("triton" serves the fp16 model, so it comes after "fp16")
BUILD_ORDER = ("fp32-optimized", "ort", "int8-qdq", "fp16", "triton", "vitis-ai")
#: which model a runtime loads by default: the fastest the target carries
DEFAULT_PREFERENCE = ("int8-qdq", "vitis-ai", "fp16", "fp32-optimized", "ort")
#: artifact kinds whose builder rewrites the model to the target's opset itself
OPSET_REWRITING = frozenset({"vitis-ai"})
#: artifact kinds calibrated on images
CALIBRATED = frozenset({"int8-qdq", "vitis-ai"})


@dataclass(frozen=True)
class BundleConfig:
    """What ``build_bundle`` needs besides the run folder and the target."""

    #: folder of images to calibrate int8 on; part of it is held out for the fidelity check
    calibration_images: Path | None = None
    #: folder of images used only for the fidelity check (then no calibration image is held out)
    heldout_images: Path | None = None
    #: share of ``calibration_images`` held out when ``heldout_images`` is not given
    heldout_fraction: float = 0.25
    #: most held-out samples checked (and stored in the bundle)
    max_heldout: int = 16
    #: synthetic samples used when there are no images (calibration; half as many held out)
    synthetic_samples: int = 16
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise InputError(f"heldout_fraction must be between 0 and 1, got {self.heldout_fraction}")
        if self.max_heldout < 1 or self.synthetic_samples < 2:
            raise InputError("max_heldout must be >= 1 and synthetic_samples >= 2")


@dataclass(frozen=True)
class BundleModel:
    """One model file of a bundle and its fidelity against the fp32 reference."""

    file: str
    kind: str
    precision: str
    fidelity: FidelityResult
    optimization_level: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as the bundle manifest and the run report list it."""
        return {
            "file": self.file,
            "kind": self.kind,
            "precision": self.precision,
            "optimization_level": self.optimization_level,
            "fidelity": self.fidelity.to_dict(),
        }


@dataclass(frozen=True)
class BundleResult:
    """What ``build_bundle`` wrote (or, on failure, would have written) and every figure measured."""

    target: str
    bundle_dir: Path
    models: tuple[BundleModel, ...]
    files: dict[str, str]
    calibration: dict[str, Any] | None
    heldout: dict[str, Any]
    triton: dict[str, Any] | None
    timings: dict[str, float]
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def summary(self) -> str:
        """One line per bundle for the CLI: each model's precision and its worst figures vs fp32."""
        return _summary(self.bundle_dir, [m.fidelity for m in self.models], self.failures)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the run report."""
        return {
            "target": self.target,
            "bundle_dir": str(self.bundle_dir),
            "passed": self.passed,
            "summary": self.summary,
            "models": [m.to_dict() for m in self.models],
            "files": dict(self.files),
            "calibration": self.calibration,
            "heldout": self.heldout,
            "triton": self.triton,
            "timings": dict(self.timings),
            "failures": list(self.failures),
        }


def _summary(where: Path, results: list[FidelityResult], failures: tuple[str, ...]) -> str:
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


@dataclass(frozen=True)
class BundleVerifyResult:
    """A bundle re-checked on disk: hashes, Triton config, and fidelity re-run."""

    bundle_dir: Path
    target: str
    files_checked: int
    models: tuple[FidelityResult, ...]
    triton: dict[str, Any] | None
    unlisted_files: tuple[str, ...] = ()
    failures: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def summary(self) -> str:
        """One line for the CLI: files checked and each model's worst figures."""
        return f"{self.files_checked} files match their sha256; " + _summary(
            self.bundle_dir, list(self.models), self.failures
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the CLI's --json output."""
        return {
            "bundle_dir": str(self.bundle_dir),
            "target": self.target,
            "passed": self.passed,
            "summary": self.summary,
            "files_checked": self.files_checked,
            "models": [r.to_dict() for r in self.models],
            "triton": self.triton,
            "unlisted_files": list(self.unlisted_files),
            "failures": list(self.failures),
        }


# --- data: calibration and held-out samples -----------------------------------------------------


@dataclass(frozen=True)
class _Data:
    calibration: np.ndarray | None
    calibration_info: dict[str, Any] | None
    heldout: np.ndarray
    heldout_info: dict[str, Any]


def _synthetic(count: int, shape: tuple[int, ...], spec: PreprocessSpec | None, seed: int) -> np.ndarray:
    """Smooth random images (low-frequency colour fields plus a little noise), preprocessed like photos.

    Closer to natural-image statistics than white noise, but still no substitute for real images.
    """
    rng = np.random.default_rng(seed)
    if spec is None or len(shape) != 3:
        return rng.standard_normal((count, *shape)).astype(np.float32)
    channels, height, width = shape
    coarse = rng.uniform(0.0, 1.0, size=(count, channels, 4, 4)).astype(np.float32)
    rows = np.linspace(0, 3, height)
    cols = np.linspace(0, 3, width)
    r0, c0 = np.floor(rows).astype(int).clip(0, 2), np.floor(cols).astype(int).clip(0, 2)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = coarse[:, :, r0][:, :, :, c0] * (1 - fc) + coarse[:, :, r0][:, :, :, c0 + 1] * fc
    bottom = coarse[:, :, r0 + 1][:, :, :, c0] * (1 - fc) + coarse[:, :, r0 + 1][:, :, :, c0 + 1] * fc
    pixels = top * (1 - fr) + bottom * fr + rng.normal(0.0, 0.05, size=(count, channels, height, width))
    pixels = pixels.clip(0.0, 1.0).astype(np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)


def _prepare_data(
    config: BundleConfig,
    spec: PreprocessSpec | None,
    sample_shape: tuple[int, ...],
    needs_calibration: bool,
    max_calibration: int,
) -> _Data:
    rng = np.random.default_rng(config.seed)
    calibration: np.ndarray | None = None
    calibration_info: dict[str, Any] | None = None
    heldout_paths: list[Path] = []
    if config.heldout_images is not None:
        heldout_paths = list_images(config.heldout_images)[: config.max_heldout]
    if config.calibration_images is not None:
        if spec is None:
            raise InputError("the run folder's model has no image preprocessing: calibration images cannot be used")
        paths = list_images(config.calibration_images)
        if needs_calibration and not heldout_paths:
            if len(paths) < 2:
                raise InputError(
                    f"{config.calibration_images} holds {len(paths)} image: need at least 2 (one is held out "
                    "for the fidelity check), or pass held-out images separately"
                )
            order = list(rng.permutation(len(paths)))
            held = max(1, min(config.max_heldout, round(len(paths) * config.heldout_fraction)))
            heldout_paths = [paths[i] for i in sorted(order[:held])]
            paths = [paths[i] for i in sorted(order[held:])]
        elif not needs_calibration and not heldout_paths:
            heldout_paths, paths = paths[: config.max_heldout], []
        if needs_calibration:
            paths = paths[:max_calibration]
            calibration = load_batch(paths, spec)
            calibration_info = {
                "synthetic": False,
                "samples": len(paths),
                "images": [p.name for p in paths],
                "folder": str(config.calibration_images),
            }
    if needs_calibration and calibration is None:
        calibration = _synthetic(config.synthetic_samples, sample_shape, spec, config.seed)
        calibration_info = {
            "synthetic": True,
            "samples": len(calibration),
            "warning": "SYNTHETIC calibration data (smooth random images): int8 ranges may not fit real inputs; "
            "rebuild with --calibration-images DIR",
        }
        log.warning("calibrating int8 on synthetic data: pass calibration images for a bundle fit for use")
    if heldout_paths:
        assert spec is not None
        heldout = load_batch(heldout_paths, spec)
        heldout_info = {"synthetic": False, "samples": len(heldout_paths), "images": [p.name for p in heldout_paths]}
    else:
        count = max(2, min(config.max_heldout, config.synthetic_samples // 2))
        heldout = _synthetic(count, sample_shape, spec, config.seed + 1)
        heldout_info = {"synthetic": True, "samples": count, "warning": "fidelity measured on SYNTHETIC inputs"}
    if heldout.shape[1:] != sample_shape:
        raise InputError(f"preprocessed images have shape {heldout.shape[1:]}, the model takes {sample_shape}")
    return _Data(calibration, calibration_info, heldout, heldout_info)


# --- running models ---------------------------------------------------------------------------


def _session(model: Path | bytes) -> Any:
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        name = model.name if isinstance(model, Path) else "model"
        raise BundleError(f"{name} does not load in onnxruntime: {str(exc).splitlines()[0]}") from None


def _run(session: Any, samples: np.ndarray) -> list[np.ndarray]:
    """Run a single-input model over ``samples``, in one batch or one sample at a time for fixed batches."""
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


# --- building ---------------------------------------------------------------------------------


@dataclass
class _Context:
    run_dir: Path
    out: Path
    target: HardwareTarget
    manifest: dict[str, Any]
    model: Any  # fp32 ModelProto with shapes inferred
    model_path: Path
    data: _Data
    reference: list[np.ndarray]
    output_names: list[str]
    dynamic_batch: bool
    models: list[BundleModel] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _check_model(ctx: _Context, file: str, kind: str, *, level: str | None = None) -> None:
    precision = ARTIFACT_PRECISION[kind]
    thresholds = ctx.target.fidelity[precision]
    session = _session(ctx.out / file)
    outputs = _run(session, ctx.data.heldout)
    data = "synthetic" if ctx.data.heldout_info["synthetic"] else f"{len(ctx.data.heldout)} held-out images"
    provider = session.get_providers()[0]
    result = judge(file, precision, ctx.output_names, ctx.reference, outputs, thresholds, data, provider=provider)
    ctx.models.append(BundleModel(file=file, kind=kind, precision=precision, fidelity=result, optimization_level=level))


def _prepared_model_file(ctx: _Context) -> Path:
    """The fp32 model to optimize: the run's own file, or (for a static-batch target) a fixed-batch copy."""
    if ctx.dynamic_batch == (ctx.target.batch == "dynamic"):
        return ctx.model_path
    import onnx

    path = ctx.out / ".work" / "model.static.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(ctx.model, str(path))
    return path


def _build_fp32_optimized(ctx: _Context) -> None:
    from onnx_pipeline.bundling.ort_tools import optimize_offline

    level = ctx.target.session.offline_optimization
    optimize_offline(_prepared_model_file(ctx), ctx.out / "model.fp32.onnx", level)
    _check_model(ctx, "model.fp32.onnx", "fp32-optimized", level=level)


def _build_ort(ctx: _Context) -> None:
    from onnx_pipeline.bundling.ort_tools import optimize_offline, write_required_operators

    level = ctx.target.session.offline_optimization
    optimize_offline(_prepared_model_file(ctx), ctx.out / "model.fp32.ort", level, ort_format=True)
    write_required_operators(ctx.out / "model.fp32.ort", ctx.out / "required_operators.config")
    _check_model(ctx, "model.fp32.ort", "ort", level=level)


def _build_int8(ctx: _Context) -> None:
    import onnx

    from onnx_pipeline.bundling.quantize_int8 import quantize_qdq

    assert ctx.target.quantization is not None and ctx.data.calibration is not None
    quantized, result = quantize_qdq(
        ctx.model,
        ctx.model.graph.input[0].name,
        ctx.data.calibration,
        ctx.target.quantization,
        dynamic_batch=ctx.target.batch == "dynamic",
    )
    onnx.save(quantized, str(ctx.out / "model.int8.onnx"))
    ctx.extra["quantization"] = {**result.settings, "quantized_tensors": result.quantized_nodes}
    ctx.timings["calibrate"] = result.seconds_calibrate
    ctx.timings["quantize"] = result.seconds_quantize
    _check_model(ctx, "model.int8.onnx", "int8-qdq")


def _build_fp16(ctx: _Context) -> None:
    import onnx

    from onnx_pipeline.bundling.fp16 import convert_fp16

    assert ctx.target.fp16 is not None
    converted = convert_fp16(ctx.model, ctx.target.fp16)
    onnx.save(converted, str(ctx.out / "model.fp16.onnx"))
    kept = sorted({n.op_type for n in converted.graph.node if n.op_type in set(ctx.target.fp16.op_block_list)})
    ctx.extra["fp16"] = {
        "keep_io_types": True,
        "op_block_list": list(ctx.target.fp16.op_block_list),
        "ops_kept_fp32": kept,
        "casts": sum(1 for n in converted.graph.node if n.op_type == "Cast"),
    }
    _check_model(ctx, "model.fp16.onnx", "fp16")


def _triton_name(manifest: dict[str, Any]) -> str:
    raw = str((manifest.get("source") or {}).get("model") or "model")
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)
    return name or "model"


def _build_triton(ctx: _Context) -> None:
    import onnx

    from onnx_pipeline.bundling.triton import check_config, render_config

    assert ctx.target.triton is not None
    name = _triton_name(ctx.manifest)
    folder = ctx.out / "triton" / name
    (folder / "1").mkdir(parents=True)
    source = ctx.out / "model.fp16.onnx"
    try:
        os.link(source, folder / "1" / "model.onnx")
    except OSError:
        shutil.copyfile(source, folder / "1" / "model.onnx")
    model = onnx.load(str(source), load_external_data=False)
    text = render_config(name, model, ctx.target.triton)
    (folder / "config.pbtxt").write_text(text, encoding="utf-8")
    summary = check_config(text, model, model_name=name, source=f"triton/{name}/config.pbtxt")
    ctx.extra["triton"] = {
        "repository": "triton",
        "model_name": name,
        "config": f"triton/{name}/config.pbtxt",
        "model": f"triton/{name}/1/model.onnx",
        "serves": "model.fp16.onnx",
        **summary,
    }


def _build_vitis(ctx: _Context) -> None:
    from onnx_pipeline.bundling.fidelity import judge
    from onnx_pipeline.targets import FidelityThresholds
    from onnx_pipeline.vitis.bundle import write_vitis_artifacts

    assert ctx.data.calibration is not None and ctx.data.calibration_info is not None
    try:
        artifacts = write_vitis_artifacts(
            ctx.model_path,
            ctx.out,
            ctx.target,
            ctx.data.calibration,
            ctx.data.heldout,
            ctx.manifest.get("labels"),
            bool(ctx.data.calibration_info.get("synthetic")),
            preprocessing=ctx.manifest.get("preprocessing"),
        )
    except BundleError as exc:
        # The Vitis builder judged its model against its own float copy: keep its figures as the result.
        raise BundleError(f"Vitis AI bundle: {exc.message}", result=exc.result) from None
    file = artifacts.models["xint8_qdq"]
    # Re-judged here against the run's fp32 reference on a plain CPU session (what verify_bundle re-runs),
    # with the thresholds the Vitis builder applied.
    thresholds = FidelityThresholds(**artifacts.fidelity["thresholds"])
    outputs = _run(_session(ctx.out / file), ctx.data.heldout)
    data = "synthetic" if ctx.data.heldout_info["synthetic"] else f"{len(ctx.data.heldout)} held-out images"
    result = judge(file, "int8", ctx.output_names, ctx.reference, outputs, thresholds, data)
    ctx.models.append(BundleModel(file=file, kind="vitis-ai", precision="int8", fidelity=result))
    summary = artifacts.to_dict()
    ctx.extra["vitis"] = {
        k: summary[k] for k in ("models", "dpu", "dpu_report", "quant_params", "provider", "rewrites")
    }
    ctx.extra["vitis"]["fidelity_float_vs_xint8"] = artifacts.fidelity
    ctx.timings.update({f"vitis_{k}": round(v, 3) for k, v in artifacts.seconds.items()})


_BUILDERS = {
    "fp32-optimized": _build_fp32_optimized,
    "ort": _build_ort,
    "int8-qdq": _build_int8,
    "fp16": _build_fp16,
    "triton": _build_triton,
    "vitis-ai": _build_vitis,
}


def _load_run(run_dir: Path) -> tuple[dict[str, Any], Path]:
    manifest = read_json(run_dir / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("schema") != RUN_SCHEMA:
        raise InputError(f"{run_dir}/manifest.json is not a run manifest ({RUN_SCHEMA}): give a run folder")
    model_path = run_dir / str(manifest.get("model_file") or "model.onnx")
    if not model_path.is_file():
        raise InputError(f"{model_path} is missing: re-run onnx-pipeline export")
    expected = (manifest.get("files") or {}).get(model_path.name)
    if expected and sha256_file(model_path) != expected:
        raise InputError(f"{model_path} does not match the sha256 in its run manifest: re-run onnx-pipeline export")
    return manifest, model_path


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    try:
        from importlib.metadata import version

        ours = version("onnx-pipeline")
    except Exception:  # not installed (a source checkout)
        ours = "source"
    return {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "onnx_pipeline": ours,
    }


def build_bundle(run_dir: Path, target: HardwareTarget, config: BundleConfig) -> BundleResult:
    """Write ``run_dir/bundles/<target.name>/`` for ``target``; raise BundleError with the figures if it falls short.

    Every fidelity shortfall is collected first; the one error raised carries the full
    ``BundleResult`` in ``.result``. Nothing is left at the bundle path when the build fails.
    """
    import onnx

    run_dir = Path(run_dir)
    started = time.perf_counter()
    out_path = run_dir / "bundles" / target.name
    if out_path.exists() and not config.force:  # say so before minutes of work (checked again on writing)
        raise OutputExistsError(f"{out_path} already exists: pass --force to replace it")
    manifest, model_path = _load_run(run_dir)
    opset = int(manifest.get("opset") or 0)
    if opset not in target.opset and not set(target.artifacts) <= OPSET_REWRITING:
        raise BundleError(
            f"the model uses opset {opset}; target '{target.name}' takes {target.opset.min}..{target.opset.max}: "
            f"re-export with --opset {min(max(opset, target.opset.min), target.opset.max)}"
        )
    dynamic_batch = bool(manifest.get("dynamic_batch"))
    if target.batch == "dynamic" and not dynamic_batch:
        raise BundleError(
            f"target '{target.name}' needs a dynamic batch axis but the model's batch is static: "
            "re-export without --static-batch"
        )
    inputs = manifest.get("inputs") or []
    if len(inputs) != 1:
        raise BundleError(f"bundles support single-input models; this model has {len(inputs)} inputs")
    sample_shape = tuple(int(d) for d in inputs[0]["shape"][1:])
    preprocessing = manifest.get("preprocessing")
    spec = PreprocessSpec.from_dict(preprocessing) if preprocessing else None
    max_calibration = target.quantization.max_calibration_samples if target.quantization else 64
    data = _prepare_data(config, spec, sample_shape, bool(CALIBRATED & set(target.artifacts)), max_calibration)

    from onnx_pipeline.bundling.quantize_int8 import infer_shapes

    try:
        model = onnx.load(str(model_path))
        infer_shapes(model)
    except Exception as exc:  # onnx raises assorted errors on broken files
        raise InputError(f"{model_path} is not a loadable ONNX model ({exc}): re-run onnx-pipeline export") from None
    if dynamic_batch and target.batch == "static":
        from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

        make_input_shape_fixed(model.graph, model.graph.input[0].name, [1, *sample_shape])
        infer_shapes(model)
    reference = _run(_session(model_path), data.heldout)
    output_names = [o.name for o in model.graph.output]

    with atomic_output_dir(out_path, force=config.force) as tmp:
        ctx = _Context(
            run_dir=run_dir,
            out=tmp,
            target=target,
            manifest=manifest,
            model=model,
            model_path=model_path,
            data=data,
            reference=reference,
            output_names=output_names,
            dynamic_batch=dynamic_batch and target.batch == "dynamic",
        )
        for kind in sorted(target.artifacts, key=BUILD_ORDER.index):
            step_start = time.perf_counter()
            _BUILDERS[kind](ctx)
            ctx.timings[f"build_{kind}"] = round(time.perf_counter() - step_start, 3)
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        (tmp / "fidelity").mkdir()
        arrays: dict[str, Any] = {"inputs": data.heldout}
        arrays.update({f"reference_{i}": r for i, r in enumerate(reference)})
        np.savez_compressed(tmp / HELDOUT_FILE, **arrays)
        (tmp / "README.md").write_text(_readme(target, ctx, manifest), encoding="utf-8")
        ctx.timings["total"] = round(time.perf_counter() - started, 3)
        files = hash_tree(tmp, exclude=("manifest.json",))
        failures = tuple(f for m in ctx.models for f in m.fidelity.failures)
        result = BundleResult(
            target=target.name,
            bundle_dir=out_path,
            models=tuple(ctx.models),
            files=files,
            calibration=data.calibration_info,
            heldout=data.heldout_info,
            triton=ctx.extra.get("triton"),
            timings=dict(ctx.timings),
            failures=failures,
        )
        if failures:
            raise BundleError(
                f"bundle '{target.name}' falls short of the target's fidelity thresholds: " + "; ".join(failures),
                result=result,
            )
        write_json(tmp / "manifest.json", _bundle_manifest(target, ctx, manifest, model_path, files, dynamic_batch))
    log.info("bundle %s written to %s", target.name, out_path)
    return result


def _bundle_manifest(
    target: HardwareTarget,
    ctx: _Context,
    run_manifest: dict[str, Any],
    model_path: Path,
    files: dict[str, str],
    dynamic_batch: bool,
) -> dict[str, Any]:
    kinds = {m.kind: m.file for m in ctx.models}
    default = next((kinds[k] for k in DEFAULT_PREFERENCE if k in kinds), ctx.models[0].file if ctx.models else None)
    io_batch = dynamic_batch and target.batch == "dynamic"

    def io(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if io_batch:
            return entries
        return [{**e, "shape": [1, *e["shape"][1:]]} for e in entries]

    return {
        "schema": BUNDLE_SCHEMA,
        "target": {
            "name": target.name,
            "description": target.description,
            "profile": target.source.name,
            "artifacts": list(target.artifacts),
            "batch": target.batch,
            "opset": {"min": target.opset.min, "max": target.opset.max},
            "offline_optimization": target.session.offline_optimization,
        },
        "models": [m.to_dict() for m in ctx.models],
        "default_model": default,
        "inputs": io(run_manifest.get("inputs") or []),
        "outputs": io(run_manifest.get("outputs") or []),
        "dynamic_batch": io_batch,
        "task": run_manifest.get("task"),
        "preprocessing": run_manifest.get("preprocessing"),
        "labels": run_manifest.get("labels"),
        # options as onnxruntime takes them (strings), ready for InferenceSession(providers=...)
        "execution_providers": [{"name": n, "options": o} for n, o in target.providers],
        # read by onnx_pipeline.runtime.session.SessionSettings.from_dict on the device
        "session_options": {
            "graph_optimization_level": target.session.graph_optimization_level,
            "intra_op_num_threads": target.session.intra_op_num_threads,
            "config_entries": dict(target.session.config_entries),
        },
        "precisions": sorted({m.precision for m in ctx.models}),
        "calibration": ctx.data.calibration_info,
        "heldout": {**ctx.data.heldout_info, "file": HELDOUT_FILE},
        "quantization": ctx.extra.get("quantization"),
        "fp16": ctx.extra.get("fp16"),
        "triton": ctx.extra.get("triton"),
        "vitis": ctx.extra.get("vitis"),
        "run": {
            "model_file": model_path.name,
            # the run manifest already holds it (verified by _load_run when it checks the run folder)
            "model_sha256": (run_manifest.get("files") or {}).get(model_path.name) or sha256_file(model_path),
            "source": run_manifest.get("source"),
            "opset": run_manifest.get("opset"),
        },
        "versions": _versions(),
        "timings": dict(ctx.timings),
        "files": files,
    }


def _readme(target: HardwareTarget, ctx: _Context, run_manifest: dict[str, Any]) -> str:
    providers = ", ".join(ep.name for ep in target.execution_providers)
    lines = [
        f"# {target.name} bundle: {(run_manifest.get('source') or {}).get('model', 'model')}",
        "",
        target.description,
        "",
        "## Files",
        "",
    ]
    for m in ctx.models:
        fig = m.fidelity.outputs[0] if m.fidelity.outputs else None
        top1 = (
            "top-1 not measurable (reference leads within the model's noise)"
            if fig is None or fig.top1_agreement is None
            else f"top-1 agreement {fig.top1_agreement:.0%} on {fig.decided_samples} decided samples"
        )
        figures = f"cosine ≥ {fig.min_cosine:.5f}, SQNR {fig.sqnr_db:.1f} dB, {top1}" if fig else ""
        lines.append(f"- `{m.file}` ({m.kind}, {m.precision}): {figures} vs fp32")
    if "triton" in ctx.extra:
        t = ctx.extra["triton"]
        lines.append(
            f"- `triton/` : Triton model repository; start with `tritonserver --model-repository=triton` "
            f"(model `{t['model_name']}`, max_batch_size {t['max_batch_size']})"
        )
    if ctx.data.calibration_info and ctx.data.calibration_info.get("synthetic"):
        lines += ["", "**Warning: int8 was calibrated on SYNTHETIC data; rebuild with calibration images.**"]
    lines += [
        "- `manifest.json`: inputs/outputs, preprocessing, labels, providers and options, sha256 of every file",
        f"- `{HELDOUT_FILE}`: held-out inputs and fp32 reference outputs for re-checking on the device",
        "",
        "## Run it",
        "",
        "```python",
        "import onnxruntime as ort",
        f"# providers, in order: {providers} (options in manifest.json → execution_providers)",
        f'session = ort.InferenceSession("{_default_file(ctx)}", providers=[...])',
        "```",
        "",
        "Or with onnx-pipeline's runtime: `Bundle.load(path).predict(image)`; check the bundle with",
        "`onnx-pipeline verify <this folder>` (hashes and fidelity).",
    ]
    if "ort" in target.artifacts:
        lines += [
            "",
            "`model.fp32.ort` runs on onnxruntime's mobile and minimal builds; build a reduced runtime with",
            "`--include_ops_by_config required_operators.config --enable_reduced_operator_type_support`.",
        ]
    return "\n".join(lines) + "\n"


def _default_file(ctx: _Context) -> str:
    kinds = {m.kind: m.file for m in ctx.models}
    return next((kinds[k] for k in DEFAULT_PREFERENCE if k in kinds), "model.onnx")


# --- verifying --------------------------------------------------------------------------------


def verify_bundle(bundle_dir: Path) -> BundleVerifyResult:
    """Re-check a bundle on disk: every file's sha256, the Triton config, and each model's fidelity.

    A missing, truncated or altered file raises BundleError naming it (models are not run then);
    a fidelity shortfall raises BundleError whose ``.result`` holds every figure.
    """
    import onnx

    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{bundle_dir} has no manifest.json: is it a bundle written by onnx-pipeline?")
    try:
        manifest = read_json(manifest_path)
    except InputError as exc:
        raise BundleError(exc.message) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != BUNDLE_SCHEMA:
        raise BundleError(f"{manifest_path} is not a bundle manifest ({BUNDLE_SCHEMA})")
    listed: dict[str, str] = manifest.get("files") or {}
    problems = []
    for rel, expected in listed.items():
        path = bundle_dir / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{rel} does not match its sha256 (altered or truncated)")
    if problems:
        raise BundleError(f"bundle {bundle_dir} is damaged: " + "; ".join(problems) + ": rebuild it")
    unlisted = tuple(sorted(set(hash_tree(bundle_dir, exclude=("manifest.json",))) - set(listed)))

    triton = manifest.get("triton")
    if triton:
        from onnx_pipeline.bundling.triton import check_config

        model = onnx.load(str(bundle_dir / triton["model"]), load_external_data=False)
        text = (bundle_dir / triton["config"]).read_text(encoding="utf-8")
        check_config(text, model, model_name=triton["model_name"], source=triton["config"])

    with np.load(bundle_dir / HELDOUT_FILE) as stored:
        inputs = stored["inputs"]
        reference = [stored[f"reference_{i}"] for i in range(len(manifest.get("outputs") or []))]
    names = [o["name"] for o in manifest.get("outputs") or []]
    results = []
    for entry in manifest.get("models") or []:
        recorded = entry["fidelity"]
        thresholds = FidelityThresholds(**recorded["thresholds"])
        session = _session(bundle_dir / entry["file"])
        outputs = _run(session, inputs)
        results.append(
            judge(
                entry["file"],
                entry["precision"],
                names,
                reference,
                outputs,
                thresholds,
                recorded["data"],
                provider=session.get_providers()[0],
            )
        )
    failures = tuple(f for r in results for f in r.failures)
    result = BundleVerifyResult(
        bundle_dir=bundle_dir,
        target=str((manifest.get("target") or {}).get("name")),
        files_checked=len(listed),
        models=tuple(results),
        triton=triton,
        unlisted_files=unlisted,
        failures=failures,
    )
    if failures:
        raise BundleError(f"bundle {bundle_dir} fails its fidelity check: " + "; ".join(failures), result=result)
    return result
