"""onnxruntime's offline tools: graph optimization written to disk, ORT format, required-operators config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from onnx_pipeline.errors import BundleError

log = logging.getLogger(__name__)

_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def graph_optimization_level(level: str) -> Any:
    """The onnxruntime enum for a profile's level name ("disabled", "basic", "extended", "all")."""
    import onnxruntime as ort

    return getattr(ort.GraphOptimizationLevel, _LEVELS[level])


def optimize_offline(source: Path, output: Path, level: str, *, ort_format: bool = False) -> None:
    """Load ``source`` in onnxruntime (CPU provider) at ``level`` and save the optimized graph to ``output``.

    With ``ort_format`` the result is an ORT-format model (``.ort``) for onnxruntime's mobile and
    minimal builds.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = graph_optimization_level(level)
    options.optimized_model_filepath = str(output)
    if ort_format:
        options.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        what = "ORT-format" if ort_format else "optimized"
        raise BundleError(f"onnxruntime could not write the {what} model ({str(exc).splitlines()[0]})") from None
    if not output.is_file():
        raise BundleError(f"onnxruntime did not write {output.name}")


def write_required_operators(ort_model: Path, output: Path) -> None:
    """Write the required-operators (and types) config for a reduced onnxruntime build from an .ort model."""
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    try:
        create_config_from_models([ort_model], output, enable_type_reduction=True)
    except Exception as exc:  # the tool raises on models it cannot read
        raise BundleError(f"could not extract the required operators of {ort_model.name}: {exc}") from None
    # The tool records the absolute path of the model it read: keep only the file name.
    text = output.read_text(encoding="utf-8").replace(str(ort_model), ort_model.name)
    output.write_text(text, encoding="utf-8")
