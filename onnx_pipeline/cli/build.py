"""Commands that make and check run folders and bundles: export, verify, targets, bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnx_pipeline.cli.app import app
from onnx_pipeline.cli.options import (
    AlsoTargetOpt,
    AtolOpt,
    BatchOpt,
    CosOpt,
    DebugOpt,
    ExporterOpt,
    ExternalDataOpt,
    ImagesOpt,
    IsolateOpt,
    JsonOpt,
    ModelOpt,
    NoFallbackOpt,
    ProgressOpt,
    ReportOpt,
    RescaleOpt,
    RtolOpt,
    SeedOpt,
    ShapeOpt,
    TrustOpt,
    WeightsOpt,
    forward,
    parse_shape,
)
from onnx_pipeline.cli.output import errors, out, run_command


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The run folder to write.")],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = None,
    input_shape: ShapeOpt = None,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Keep the batch axis fixed.")] = False,
    exporter: ExporterOpt = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 18).")] = None,
    external_data: ExternalDataOpt = False,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="Skip graph simplification.")] = False,
    simplifier: Annotated[str | None, typer.Option("--simplifier", help="onnxsim (default) or onnxslim.")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip parity verification (not recommended).")] = False,
    images: ImagesOpt = None,
    batch_size: BatchOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosOpt = None,
    target: AlsoTargetOpt = None,
    calibration_images: Annotated[
        Path | None, typer.Option("--calibration-images", help="Photographs for int8 calibration (bundles).")
    ] = None,
    no_fallback: NoFallbackOpt = False,
    config: Annotated[Path | None, typer.Option("--config", help="A TOML config file (CLI flags win).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    isolate: IsolateOpt = True,
    rescale_random: RescaleOpt = True,
    as_json: JsonOpt = False,
    show_progress: ProgressOpt = False,
    report: ReportOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Export a PyTorch model to ONNX, check, simplify and verify it into a run folder.

    Examples:

        onnx-pipeline export --model vgg16 --weights random --output runs/vgg16

        onnx-pipeline export -m resnet50 -w imagenet -o runs/r50 --images photos/ --target cpu-x86_64

        onnx-pipeline export -m my_models.py:build -w ckpt.pt --input-shape 1,3,128,128 -o runs/mine
    """
    options = locals()
    from onnx_pipeline import api

    run_command(
        forward(
            api.export,
            options,
            input_shape=parse_shape(input_shape),
            external_data=True if external_data else None,
            simplify=not no_simplify,
            verify=not no_verify,
            targets=tuple(target or ()),
            fallback=not no_fallback,
        ),
        options,
        output=output,
    )


# --------------------------------------------------------------------------- verify


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="A run folder, or an .onnx file (then give --model).")],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = None,
    input_shape: ShapeOpt = None,
    images: ImagesOpt = None,
    batch_size: BatchOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosOpt = None,
    provider: Annotated[
        list[str] | None, typer.Option("--provider", help="onnxruntime execution provider(s), in order.")
    ] = None,
    isolate: IsolateOpt = True,
    rescale_random: RescaleOpt = True,
    trust_source: TrustOpt = False,
    localize: Annotated[
        bool, typer.Option("--localize", help="Name the first layer leaving the noise floor even when parity passes.")
    ] = False,
    as_json: JsonOpt = False,
    show_progress: ProgressOpt = False,
    report: ReportOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Verify numerical parity of a run folder, or of any ONNX file against a PyTorch model.

    Exit code 0 when every output is within tolerance, 1 when not, 2 for bad input.

    Examples:

        onnx-pipeline verify runs/vgg16

        onnx-pipeline verify model.onnx --model vgg16 --weights vgg16.pth --images photos/ --json
    """
    options = locals()
    from onnx_pipeline import api

    run_command(
        forward(api.verify, options, input_shape=parse_shape(input_shape), providers=provider or None),
        options,
        output=path,
    )


# --------------------------------------------------------------------------- targets and bundles


@app.command()
def targets(as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the hardware targets in hardware/ (use --target PATH.toml for a profile of your own)."""
    from onnx_pipeline import api

    with errors(debug):
        found = api.targets()
    if as_json:
        rows = [
            {
                "name": t.name,
                "description": t.description,
                "precisions": list(t.precisions),
                "artifacts": list(t.artifacts),
                "providers": [name for name, _ in t.providers],
                "batch": t.batch,
                "opset": [t.opset.min, t.opset.max],
                "profile": str(t.source),
            }
            for t in found
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="hardware targets", title_justify="left")
    for column in ("name", "precisions", "artifacts", "providers", "batch", "description"):
        table.add_column(column)
    for t in found:
        table.add_row(
            t.name,
            ", ".join(t.precisions),
            ", ".join(t.artifacts),
            ", ".join(name for name, _ in t.providers),
            t.batch,
            t.description,
        )
    out.print(table)


@app.command()
def bundle(
    run: Annotated[Path, typer.Argument(help="A run folder written by export.")],
    target: Annotated[
        list[str], typer.Option("--target", "-t", help="Target name (onnx-pipeline targets) or PATH.toml; repeatable.")
    ],
    calibration_images: Annotated[
        Path | None, typer.Option("--calibration-images", help="Photographs to calibrate int8 on (part held out).")
    ] = None,
    heldout_images: Annotated[
        Path | None, typer.Option("--heldout-images", help="Photographs for the fidelity check only.")
    ] = None,
    seed: SeedOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing bundles.")] = False,
    no_fallback: NoFallbackOpt = False,
    trust_source: TrustOpt = False,
    as_json: JsonOpt = False,
    show_progress: ProgressOpt = False,
    report: ReportOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Build hardware bundles from a run folder into RUN/bundles/TARGET/.

    Examples:

        onnx-pipeline bundle runs/vgg16 --target cpu-x86_64 --calibration-images photos/

        onnx-pipeline bundle runs/vgg16 -t cuda -t tensorrt -t vitis-ai-zcu102

        onnx-pipeline bundle runs/vgg16 -t torchscript -t torchserve
    """
    options = locals()
    from onnx_pipeline import api

    run_command(
        forward(api.bundle, options, targets=target, seed=seed or 0, fallback=not no_fallback),
        options,
        output=run / "bundles",
    )
