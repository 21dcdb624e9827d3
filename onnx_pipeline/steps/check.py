"""Check an ONNX file: onnx.checker with full check (shape inference included)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from onnx_pipeline.errors import CheckError
from onnx_pipeline.onnxfile import ModelInfo, describe_model, load_onnx


@dataclass(frozen=True)
class CheckResult:
    """The checker passed (a failure raises ``CheckError``); what it looked at."""

    path: Path
    info: ModelInfo
    seconds: float


def check_model(path: Path) -> CheckResult:
    """Run onnx.checker (full check, shape inference) on a file; raise ``CheckError`` on failure."""
    import onnx

    start = time.perf_counter()
    path = Path(path)
    model = load_onnx(path, load_external_data=False)
    try:
        # A path (not a proto) lets the checker follow external data and models over 2 GB.
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckError(f"the ONNX checker rejected {path.name}: {first}") from None
    return CheckResult(path=path, info=describe_model(path, model), seconds=time.perf_counter() - start)
