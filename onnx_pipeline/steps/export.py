"""Export a PyTorch module to ONNX with the dynamo exporter, or the TorchScript-based one.

Why dynamo by default: it is the exporter PyTorch maintains (the TorchScript-based one is
deprecated since 2.9), it was faster on VGG16 here (the issue measured 4.8 s vs 9.3 s), and it
refuses data-dependent control flow instead of baking one branch. When it fails, the
TorchScript-based exporter is tried and the fallback is recorded. A trace that turned a tensor
into a Python bool (a data-dependent branch) is never kept: the module is scripted so the branch
becomes an ONNX ``If``, or the export stops and says how to fix the model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_pipeline.config import ExportConfig
from onnx_pipeline.errors import ExportError
from onnx_pipeline.onnxfile import PROTOBUF_LIMIT
from onnx_pipeline.tracing import bakes_branch

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ExportResult:
    """What the export produced and how."""

    path: Path
    requested: str
    used: str  # "dynamo", "torchscript-trace" or "torchscript-script"
    opset: int
    dynamic_batch: bool
    external_data: str | None
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("[torch.onnx]"):
            return f"{type(exc).__name__}: {line[:300]}"
    return type(exc).__name__


def _param_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _names_and_opset(config: ExportConfig) -> dict[str, Any]:
    """What both exporters are told alike: the input and output names, the opset."""
    return {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": config.opset}


def _export_dynamo(module: Any, example: Any, path: Path, config: ExportConfig, external: bool) -> None:
    import torch

    dynamic_shapes = None
    if config.dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        external_data=external,
        **_names_and_opset(config),
        verbose=False,
        optimize=True,
    )
    if program is None:  # pragma: no cover - only for very old torch
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=external)


def _export_torchscript(module: Any, example: Any, path: Path, config: ExportConfig, external: bool) -> None:
    import torch

    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if config.dynamic_batch else None
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=False,
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
        **_names_and_opset(config),
    )
    if external:
        import onnx

        model = onnx.load(str(path))
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
        )


def export_model(module: Any, example: Any, path: Path, config: ExportConfig) -> ExportResult:
    """Export ``module`` called on ``example`` (one input tensor) to ``path``.

    ``example`` should have a batch of at least 2 when the batch is dynamic: torch.export
    specialises a dimension of size 1.
    """
    import torch

    start = time.perf_counter()
    external = config.external_data if config.external_data is not None else _param_bytes(module) > PROTOBUF_LIMIT * 0.9
    order = [config.exporter]
    if config.fallback:
        order.append("torchscript" if config.exporter == "dynamo" else "dynamo")
    fallbacks: list[dict[str, str]] = []
    findings: list[str] = []
    if isinstance(module, torch.jit.ScriptModule) and order[0] == "dynamo":
        fallbacks.append({"exporter": "dynamo", "error": "a TorchScript archive cannot go through torch.export"})
        order = ["torchscript"]
    used = None
    for exporter in order:
        captured = io.StringIO()
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                contextlib.redirect_stdout(captured),
                contextlib.redirect_stderr(captured),
                torch.inference_mode(False),
                torch.no_grad(),
            ):
                warnings.simplefilter("always")
                if exporter == "dynamo":
                    _export_dynamo(module, example, path, config, external)
                    used = "dynamo"
                else:
                    _export_torchscript(module, example, path, config, external)
                    used = "torchscript-script" if isinstance(module, torch.jit.ScriptModule) else "torchscript-trace"
        except ExportError:
            raise
        except Exception as exc:  # exporters raise anything from torch internals
            logger.info("%s exporter failed: %s", exporter, exc)
            fallbacks.append({"exporter": exporter, "error": _first_line(exc)})
            _remove(path)
            continue
        tracer = [w for w in caught if w.category.__name__ == "TracerWarning"]
        findings += sorted({f"tracer: {str(w.message).splitlines()[0][:200]}" for w in tracer})
        if used == "torchscript-trace" and bakes_branch(str(w.message) for w in tracer):
            _remove(path)
            used = _script_instead(module, example, path, config, external, findings)
        break
    if used is None:
        _remove(path)
        tried = "; ".join(f"{f['exporter']}: {f['error']}" for f in fallbacks)
        raise ExportError(
            f"every exporter failed ({tried}). Make the model exportable with torch.export "
            "(see https://pytorch.org/docs/stable/export.html) or try --opset / --exporter"
        )
    return ExportResult(
        path=path,
        requested=config.exporter,
        used=used,
        opset=config.opset,
        dynamic_batch=config.dynamic_batch,
        external_data=(path.name + ".data") if external and (path.parent / (path.name + ".data")).exists() else None,
        fallbacks=fallbacks,
        findings=findings,
        seconds=time.perf_counter() - start,
    )


def _script_instead(
    module: Any, example: Any, path: Path, config: ExportConfig, external: bool, findings: list[str]
) -> str:
    """A trace baked a data-dependent branch: export a scripted module (ONNX If) or stop."""
    import torch

    findings.append("the trace converted a tensor to a Python value (data-dependent control flow): scripting instead")
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(module)
            _export_torchscript(scripted, example, path, config, external)
    except Exception as exc:
        _remove(path)
        raise ExportError(
            "the model has data-dependent control flow (an `if` on a tensor value) that tracing would bake into "
            f"one branch, and scripting it failed ({_first_line(exc)}). Rewrite the branch with torch.cond or "
            "torch.where so the dynamo exporter can keep both branches"
        ) from None
    return "torchscript-script"


def _remove(path: Path) -> None:
    for candidate in (path, path.parent / (path.name + ".data")):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
