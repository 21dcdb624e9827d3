"""The command line: parses options, builds one config, calls the library (``api``), prints the result.

This is the only package that knows Typer and rich: ``app`` (the application and ``main``), ``options``
(options several commands share), ``output`` (consoles, one-line errors, progress, the run report),
and the commands by what they work on: ``build`` (export, verify, targets, bundle) and ``runtime``
(predict, bench, serve, report).
"""

from onnx_pipeline.cli import build, runtime
from onnx_pipeline.cli.app import app, main

__all__ = ["app", "build", "main", "runtime"]
