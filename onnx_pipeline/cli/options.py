"""The options several commands share, the parsing of their values, and their way to the API."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer


def forward(function: Callable[..., Any], options: Mapping[str, Any], **given: Any) -> partial[Any]:
    """``function`` (an ``api`` function) with each of the command's ``options`` it takes by the same name,
    and ``given``: the options renamed or converted on the way. The CLI's own options (``--json``,
    ``--debug``, ...) are not parameters of the API and stay behind."""
    accepted = inspect.signature(function).parameters
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise TypeError(f"{function.__name__} takes no {', '.join(unknown)}")
    same = {name: value for name, value in options.items() if name in accepted and name not in given}
    return partial(function, **same, **given)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a shape: write it like 1,3,224,224") from None
    if not shape or any(d < 1 for d in shape):
        raise typer.BadParameter(f"'{text}' is not a shape: every dimension must be a positive integer")
    return shape


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="torchvision model name (vgg16), tiny-vgg, package.module:factory, file.py:factory (runs that code), "
        "or a TorchScript archive.",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        help="imagenet (torchvision's weights: downloaded or from the torch hub cache), random (seeded), "
        "or PATH to a state_dict (loaded with weights_only=True).",
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for random weights and verification inputs.")]
ShapeOpt = Annotated[str | None, typer.Option("--input-shape", help="Input shape with batch, e.g. 1,3,224,224.")]
ImagesOpt = Annotated[
    Path | None, typer.Option("--images", help="Folder of photographs to verify on (the model's preprocessing).")
]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="The larger verification batch (batch 1 runs too).")]
AtolOpt = Annotated[
    float | None,
    typer.Option("--atol", help="Fixed absolute tolerance, in units of the output's range (replaces the noise floor)."),
]
RtolOpt = Annotated[
    float | None, typer.Option("--rtol", help="Fixed relative tolerance, elementwise (replaces the noise floor).")
]
CosOpt = Annotated[float | None, typer.Option("--min-cosine", help="Smallest cosine similarity per sample.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout, nothing else.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Also write the JSON report to this file.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
ProgressOpt = Annotated[
    bool,
    typer.Option("--progress", help="A progress bar per stage (on a terminal; never with --json)."),
]
IsolateOpt = Annotated[
    bool,
    typer.Option("--isolate/--no-isolate", help="Run the PyTorch side in its own process (frees its memory)."),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-source",
        help="Rebuild the folder's PyTorch model even if that runs code or reads files its manifest names "
        "(a factory, a TorchScript archive, a weights file). Only for folders from a source you trust.",
    ),
]
RescaleOpt = Annotated[
    bool,
    typer.Option(
        "--rescale-random/--no-rescale-random",
        help="With random weights, rescale layers on sample inputs so outputs are well scaled.",
    ),
]
ExporterOpt = Annotated[
    str | None, typer.Option("--exporter", help="dynamo (default) or torchscript; the other is the fallback.")
]
ExternalDataOpt = Annotated[
    bool, typer.Option("--external-data", help="Weights in model.onnx.data (automatic over 2 GB).")
]
AlsoTargetOpt = Annotated[
    list[str] | None, typer.Option("--target", "-t", help="Also build this hardware bundle (repeatable).")
]
NoFallbackOpt = Annotated[
    bool,
    typer.Option(
        "--no-fallback",
        help="Fail a bundle model that misses its thresholds as it is (default: keep its most sensitive layers "
        "in float, within the target's [fallback] budget).",
    ),
]
