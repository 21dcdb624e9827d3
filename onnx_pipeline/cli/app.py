"""The Typer application and the console-script entry point; the commands register themselves on ``app``."""

from __future__ import annotations

from typing import Annotated

import typer

from onnx_pipeline.cli.output import on_signal, out
from onnx_pipeline.errors import EXIT_OK

app = typer.Typer(
    name="onnx-pipeline",
    help="PyTorch image models to verified ONNX bundles for CPU, NVIDIA GPUs and Xilinx FPGAs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        from onnx_pipeline import __version__

        out.print(f"onnx-pipeline {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """PyTorch image models to verified ONNX bundles for CPU, NVIDIA GPUs and Xilinx FPGAs."""


def main() -> None:
    """Console-script entry point: SIGTERM and SIGHUP unwind like Ctrl-C (nothing half-written is left)."""
    import signal

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    app()
