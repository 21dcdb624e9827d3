"""The Python API: the CLI's commands as functions, with the same names and options.

    from onnx_pipeline import api
    report = api.export("vgg16", weights="random", output="runs/vgg16")
    api.verify("runs/vgg16")
    api.bundle("runs/vgg16", ["cpu-x86_64"], calibration_images="photos/")
    api.predict("runs/vgg16/bundles/cpu-x86_64", ["cat.jpg"])
    api.bench("runs/vgg16/bundles/cpu-x86_64", batch_sizes=[1])

Each function builds the same typed config the CLI builds and returns the typed result; a
problem a user can fix raises a ``PipelineError`` (``.exit_code``, ``.result``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_pipeline.config import ModelConfig, Tolerances, VerifyConfig, resolve_pipeline_config
from onnx_pipeline.pipeline import VerifyRequest, run_export, run_verify
from onnx_pipeline.report import RunReport
from onnx_pipeline.sources import model_defaults

if TYPE_CHECKING:
    from onnx_pipeline.bench import BenchResult
    from onnx_pipeline.runtime import Prediction
    from onnx_pipeline.targets import HardwareTarget


def export(
    model: str = "vgg16",
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
) -> RunReport:
    """Export, check, simplify and verify ``model`` into the run folder ``output`` (``onnx-pipeline export``)."""
    cli: dict[str, dict[str, Any]] = {
        "": {
            "output": Path(output),
            "force": force or None,
            "run_verify": None if verify else False,
            "targets": tuple(targets) or None,
            "calibration_images": Path(calibration_images) if calibration_images else None,
            "isolate_torch": isolate,
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
    from onnx_pipeline.pipeline import targets_layer

    resolved = resolve_pipeline_config(
        cli=cli,
        config_file=Path(config) if config else None,
        target=targets_layer(list(targets)),
        model_defaults=model_defaults(model),
    )
    return run_export(resolved)


def verify(
    path: str | Path,
    *,
    model: str | None = None,
    weights: str | None = None,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
    images: str | Path | None = None,
    batch_size: int = 3,
    atol: float | None = None,
    rtol: float | None = None,
    min_cosine: float | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    isolate: bool = False,
    rescale_random: bool = True,
) -> RunReport:
    """Verify a run folder, or an ONNX file against ``model`` (``onnx-pipeline verify``)."""
    tolerances = Tolerances(
        **{k: v for k, v in {"atol": atol, "rtol": rtol, "min_cosine": min_cosine}.items() if v is not None}
    )
    model_config = None
    if model is not None:
        model_config = ModelConfig(
            model=model,
            weights=weights or model_defaults(model)["model"]["weights"],
            seed=seed,
            input_shape=tuple(input_shape) if input_shape else None,
            rescale_random=rescale_random,
        )
    request = VerifyRequest(
        path=Path(path),
        model=model_config,
        verify=VerifyConfig(
            tolerances=tolerances,
            batch_size=batch_size,
            images=Path(images) if images else None,
            seed=seed,
            providers=tuple(providers),
        ),
        isolate_torch=isolate,
    )
    return run_verify(request)


def targets() -> list[HardwareTarget]:
    """The hardware targets in ``hardware/`` (``onnx-pipeline targets``)."""
    from onnx_pipeline.targets import list_targets

    return list_targets()


def bundle(
    run: str | Path,
    targets: Sequence[str],
    *,
    calibration_images: str | Path | None = None,
    heldout_images: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
) -> RunReport:
    """Build ``run/bundles/<target>/`` for each target (``onnx-pipeline bundle``)."""
    from onnx_pipeline.pipeline import run_bundle
    from onnx_pipeline.steps.bundle import BundleConfig

    config = BundleConfig(
        calibration_images=Path(calibration_images) if calibration_images else None,
        heldout_images=Path(heldout_images) if heldout_images else None,
        seed=seed,
        force=force,
    )
    return run_bundle(Path(run), list(targets), config)


def predict(
    bundle: str | Path, images: Sequence[str | Path], *, top_k: int = 5, model: str | None = None
) -> list[Prediction]:
    """Classify image files with a bundle (``onnx-pipeline predict``); onnxruntime, numpy and Pillow only."""
    from onnx_pipeline.runtime import Bundle

    loaded = Bundle.load(bundle, model=model)
    return [loaded.predict(image, top_k=top_k) for image in images]


def bench(
    bundle: str | Path, *, batch_sizes: Sequence[int] = (1, 8), seconds: float = 3.0, eager: bool = True
) -> BenchResult:
    """Latency and throughput of a bundle's models beside PyTorch eager and the GEMM floor (``onnx-pipeline bench``)."""
    from onnx_pipeline.bench import BenchConfig, benchmark_bundle
    from onnx_pipeline.pipeline import eager_model_builder

    builder = eager_model_builder(Path(bundle)) if eager else None
    config = BenchConfig(batch_sizes=tuple(batch_sizes), min_seconds=seconds, torch_model=builder, eager=eager)
    return benchmark_bundle(bundle, config)
