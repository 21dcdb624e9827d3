"""The Python API, and the one front door: the CLI calls these functions with the options it parsed.

    from onnx_pipeline import api
    report = api.export("vgg16", weights="random", output="runs/vgg16")
    api.verify("runs/vgg16")
    api.bundle("runs/vgg16", ["cpu-x86_64"], calibration_images="photos/")
    api.predict("runs/vgg16/bundles/cpu-x86_64", ["cat.jpg"])
    api.preprocess("cat.jpg", "runs/vgg16/bundles/torchscript", "cat.bin")  # the C++ program's input
    api.bench("runs/vgg16/bundles/cpu-x86_64", batch_sizes=[1])
    api.serve(["runs/vgg16/bundles/cpu-x86_64"], port=8000)
    api.report("runs/vgg16/bundles/cpu-x86_64", bench="bench.json")

Each function builds the typed config of its command once and returns the typed result; a
problem a user can fix raises a ``PipelineError`` (``.exit_code``, ``.result``). ``progress`` is
called with the name of each step as it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_pipeline.config import (
    BundleConfig,
    ModelConfig,
    Tolerances,
    VerifyConfig,
    config_file_model,
    resolve_pipeline_config,
    targets_layer,
)
from onnx_pipeline.report import RunReport

if TYPE_CHECKING:
    from onnx_pipeline.bench import BenchResult
    from onnx_pipeline.runtime import Bundle, Prediction
    from onnx_pipeline.serve import BackgroundServer, ServeConfig, ServerInfo
    from onnx_pipeline.targets import HardwareTarget

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def export(
    model: str | None = None,
    *,
    output: str | Path,
    weights: str | None = None,
    seed: int | None = None,
    input_shape: Sequence[int] | None = None,
    static_batch: bool = False,
    exporter: str | None = None,
    opset: int | None = None,
    external_data: bool | None = None,
    simplify: bool = True,
    simplifier: str | None = None,
    verify: bool = True,
    images: str | Path | None = None,
    batch_size: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    min_cosine: float | None = None,
    targets: Sequence[str] = (),
    calibration_images: str | Path | None = None,
    config: str | Path | None = None,
    force: bool = False,
    isolate: bool = False,
    rescale_random: bool = True,
    fallback: bool = True,
    progress: Progress = _quiet,
) -> RunReport:
    """Export, check, simplify and verify ``model`` into the run folder ``output`` (``onnx-pipeline export``).

    ``model`` defaults to the config file's ``[model] model``, else vgg16. ``fallback=False``: a bundle
    model that misses its thresholds fails as it is (no layer kept in float).
    """
    from onnx_pipeline.artifacts import rewrites_opset
    from onnx_pipeline.pipeline import load_targets, run_export
    from onnx_pipeline.sources import model_defaults

    config_path = Path(config) if config else None
    name = model or config_file_model(config_path) or "vgg16"
    cli: dict[str, dict[str, Any]] = {
        "": {
            "output": Path(output),
            "force": force or None,
            "run_verify": None if verify else False,
            "targets": tuple(targets) or None,
            "calibration_images": Path(calibration_images) if calibration_images else None,
            "isolate_torch": isolate,
            "fallback": None if fallback else False,
        },
        "model": {
            "model": model,
            "weights": weights,
            "seed": seed,
            "input_shape": tuple(input_shape) if input_shape else None,
            "rescale_random": None if rescale_random else False,
        },
        "export": {
            "exporter": exporter,
            "opset": opset,
            "dynamic_batch": False if static_batch else None,
            "external_data": external_data,
        },
        "simplify": {"enabled": None if simplify else False, "backend": simplifier},
        "verify": {"images": Path(images) if images else None, "batch_size": batch_size, "seed": seed},
        "tolerances": {"atol": atol, "rtol": rtol, "min_cosine": min_cosine},
    }
    constraining = [t for t in load_targets(list(targets)) if not rewrites_opset(t)]
    resolved = resolve_pipeline_config(
        cli=cli, config_file=config_path, target=targets_layer(constraining), model_defaults=model_defaults(name)
    )
    return run_export(resolved, progress=progress)


def verify(
    path: str | Path,
    *,
    model: str | None = None,
    weights: str | None = None,
    seed: int | None = None,
    input_shape: Sequence[int] | None = None,
    images: str | Path | None = None,
    batch_size: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    min_cosine: float | None = None,
    providers: Sequence[str] | None = None,
    isolate: bool = False,
    rescale_random: bool = True,
    trust_source: bool = False,
    localize: bool = False,
    progress: Progress = _quiet,
) -> RunReport:
    """Verify a bundle, a run folder, or an ONNX file against ``model`` (``onnx-pipeline verify``).

    A run folder's own model is rebuilt only if that runs no code from the folder, unless
    ``trust_source``; otherwise name the model with ``model``/``weights``. ``atol``/``rtol`` make fixed
    tolerances the criterion instead of the measured noise floor. ``localize``: name the first layer
    that leaves the noise floor even when parity passes (it is always done when parity fails).
    """
    from onnx_pipeline.errors import InputError
    from onnx_pipeline.pipeline import VerifyRequest, run_verify
    from onnx_pipeline.sources import model_defaults

    tolerances = Tolerances(
        **{k: v for k, v in {"atol": atol, "rtol": rtol, "min_cosine": min_cosine}.items() if v is not None}
    )
    options: dict[str, Any] = {
        "tolerances": tolerances,
        "images": Path(images) if images else None,
        "localize": localize,
    }
    if batch_size is not None:
        options["batch_size"] = batch_size
    if seed is not None:
        options["seed"] = seed
    if providers:
        options["providers"] = tuple(providers)
    model_config = None
    if model is not None:
        model_config = ModelConfig(
            model=model,
            weights=weights or model_defaults(model)["model"]["weights"],
            seed=seed or 0,
            input_shape=tuple(input_shape) if input_shape else None,
            rescale_random=rescale_random,
        )
    elif weights is not None or input_shape is not None:
        raise InputError("--weights and --input-shape go with --model")
    request = VerifyRequest(
        path=Path(path),
        model=model_config,
        verify=VerifyConfig(**options),
        isolate_torch=isolate,
        trust_source=trust_source,
    )
    return run_verify(request, progress=progress)


def targets() -> list[HardwareTarget]:
    """The hardware targets in ``hardware/``, each checked against the artifact builders (``onnx-pipeline targets``)."""
    from onnx_pipeline.artifacts import builders_for
    from onnx_pipeline.targets import list_targets

    found = list_targets()
    for target in found:
        builders_for(target)
    return found


def bundle(
    run: str | Path,
    targets: Sequence[str],
    *,
    calibration_images: str | Path | None = None,
    heldout_images: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    fallback: bool = True,
    trust_source: bool = False,
    progress: Progress = _quiet,
) -> RunReport:
    """Build ``run/bundles/<target>/`` for each target (``onnx-pipeline bundle``).

    ``fallback=False``: a model that misses its thresholds fails as it is (no layer kept in float).
    Targets built from the PyTorch model (``torchscript``, ``torchserve``) rebuild the run's model from its
    recorded source; a source that runs code (a factory, an archive, a weights file) needs ``trust_source``.
    """
    from onnx_pipeline.pipeline import run_bundle

    config = BundleConfig(
        calibration_images=Path(calibration_images) if calibration_images else None,
        heldout_images=Path(heldout_images) if heldout_images else None,
        seed=seed,
        force=force,
        fallback=fallback,
        trust_source=trust_source,
    )
    return run_bundle(Path(run), list(targets), config, progress=progress)


def load_bundle(bundle: str | Path, *, model: str | None = None, providers: Sequence[str] | None = None) -> Bundle:
    """Load a bundle or run folder for inference (its manifest checked, its files hashed)."""
    from onnx_pipeline.runtime import Bundle

    return Bundle.load(bundle, providers=list(providers) if providers else None, model=model)


def predict(
    bundle: str | Path,
    images: Sequence[str | Path],
    *,
    top_k: int = 5,
    model: str | None = None,
    providers: Sequence[str] | None = None,
) -> list[Prediction]:
    """Classify image files with a bundle (``onnx-pipeline predict``); onnxruntime, numpy and Pillow only."""
    from onnx_pipeline.errors import InputError

    if top_k < 1:
        raise InputError("--top-k must be at least 1")
    loaded = load_bundle(bundle, model=model, providers=providers)
    return [loaded.predict(image, top_k=top_k) for image in images]


def preprocess(image: str | Path, bundle: str | Path, output: str | Path) -> Path:
    """Apply a bundle's preprocessing to ``image`` and write the batch of one as a tensor file (``onnx-pipeline
    preprocess``): the input of the torchscript bundle's C++ program (format: ``runtime.tensorfile``).

    Only the bundle's manifest is read (validated; its files are not hashed). Returns ``output``.
    """
    from onnx_pipeline.errors import InputError
    from onnx_pipeline.manifest import read_manifest
    from onnx_pipeline.runtime.preprocess import load_image, preprocess_image
    from onnx_pipeline.runtime.tensorfile import write_tensor

    manifest = read_manifest(Path(bundle), check=False)
    spec = manifest.preprocessing
    if spec is None:
        raise InputError(f"{bundle} has no image preprocessing (not an image model): write its input yourself")
    sample = preprocess_image(load_image(Path(image), color=spec.color), spec)
    return write_tensor(Path(output), sample[None])


def bench(
    bundle: str | Path,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    seconds: float = 3.0,
    threads: int = 0,
    eager: bool = True,
    eager_model: str | None = None,
    trust_source: bool = False,
    progress: Progress = _quiet,
) -> BenchResult:
    """Latency and throughput of a bundle's models beside PyTorch eager and the GEMM floor (``onnx-pipeline bench``).

    The eager baseline rebuilds the folder's model only when that runs no code from the folder; give
    ``eager_model`` (a model name or factory of your choosing) or ``trust_source`` otherwise.
    """
    from onnx_pipeline.bench import BenchConfig, benchmark_bundle
    from onnx_pipeline.errors import InputError
    from onnx_pipeline.manifest import read_manifest
    from onnx_pipeline.sources import eager_model_builder

    config = BenchConfig(batch_sizes=tuple(batch_sizes), min_seconds=seconds, threads=threads, eager=eager)
    builder = None
    skipped: tuple[tuple[str, str], ...] = ()
    if eager:
        manifest = read_manifest(Path(bundle), check=False)
        try:
            builder = eager_model_builder(manifest, model=eager_model, trust=trust_source)
        except InputError as exc:
            skipped = (("torch-eager", exc.message),)
    progress("bench")
    from dataclasses import replace

    return benchmark_bundle(bundle, replace(config, torch_model=builder, skipped=skipped))


def _serve_config(bundles: Sequence[str | Path], **options: Any) -> ServeConfig:
    from onnx_pipeline.serve import ServeConfig

    if "providers" in options:
        options["providers"] = tuple(options["providers"]) if options["providers"] else None
    return ServeConfig(bundles=tuple(str(b) for b in bundles), **options)


def serve(
    bundles: Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 8,
    max_queue_delay_ms: float = 5.0,
    max_queue_size: int = 64,
    max_body_bytes: int = 16 << 20,
    top_k: int = 5,
    model: str | None = None,
    providers: Sequence[str] | None = None,
    on_ready: Callable[[ServerInfo], None] | None = None,
    on_request: Callable[[dict[str, Any]], None] | None = None,
) -> ServerInfo:
    """Serve bundles over HTTP until SIGTERM or Ctrl-C (``onnx-pipeline serve``); torch is never imported.

    Each bundle (or ``NAME=PATH``) is checked and loaded first: a tampered one raises
    ``IntegrityError`` and nothing starts. ``on_ready`` gets the address (``port=0`` picks a free
    one) once the server accepts requests; ``on_request`` gets one record per answered request.
    """
    options = {name: value for name, value in locals().items() if name not in ("bundles", "on_ready", "on_request")}
    from onnx_pipeline.serve import serve as run_server

    return run_server(_serve_config(bundles, **options), on_ready=on_ready, on_request=on_request)


def serve_in_background(
    bundles: Sequence[str | Path], *, on_request: Callable[[dict[str, Any]], None] | None = None, **options: Any
) -> BackgroundServer:
    """``serve`` on a thread of this process (notebooks, tests); the options are ``serve``'s.

    with api.serve_in_background(["runs/vgg16/bundles/cpu-x86_64"], port=0) as server:
        requests.post(f"{server.url}/predict", files={"file": open("cat.jpg", "rb")}).json()
    """
    from onnx_pipeline.serve import BackgroundServer

    return BackgroundServer(_serve_config(bundles, **options), on_request=on_request)


def report(path: str | Path, *, bench: str | Path | None = None) -> Path:
    """(Re)write ``path/report.html`` for a run folder or a bundle; returns its path (``onnx-pipeline report``).

    The folder is read through its manifest with every file hashed. ``bench``: a bench JSON
    (``onnx-pipeline bench BUNDLE --json > bench.json``) whose latencies the report shows; a bundle is
    never changed by it (``report.html`` is not among its hashed files).
    """
    from onnx_pipeline.report_html import write_report

    return write_report(Path(path), bench=Path(bench) if bench is not None else None)
