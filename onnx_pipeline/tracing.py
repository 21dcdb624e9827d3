"""Trace or script: the one decision the ONNX export and the TorchScript bundle share.

A trace records the operations one example input took. Where the module turns a tensor into a
Python value (``if x.sum() > 0``), the trace keeps the branch that example took and PyTorch says so
with a ``TracerWarning`` ("Converting a tensor to a Python boolean ..."). Such a trace is never kept:
the module is scripted instead (``torch.jit.script`` compiles both branches). The export step
(``steps.export``) applies this rule to the TorchScript-based ONNX exporter; ``to_torchscript``
applies it to ``model.pt``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from onnx_pipeline.errors import BundleError, first_line

#: what a TracerWarning says when a tensor became a Python value (a data-dependent branch was baked)
DATA_DEPENDENT_MARKERS = ("Python boolean", "Python index", "Python number", "Python float", "Python integer")


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch.jit's deprecation notices (trace, script, save, load): TorchScript is still what LibTorch runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        yield


def bakes_branch(messages: Iterable[str]) -> bool:
    """Whether any tracer warning says a tensor became a Python value (the trace baked a branch)."""
    return any(marker in message for message in messages for marker in DATA_DEPENDENT_MARKERS)


@dataclass(frozen=True)
class TorchScriptModule:
    """A module in TorchScript, and how it got there."""

    module: Any  # torch.jit.ScriptModule
    #: "trace", "script" or "archive" (the source already was a TorchScript archive)
    method: str
    #: why that method, in one line
    reason: str
    findings: tuple[str, ...] = field(default=())


def to_torchscript(module: Any, example: Any, *, script: bool = False) -> TorchScriptModule:
    """``module`` as TorchScript: traced on ``example``, scripted where the trace would bake a branch.

    ``script``: script without tracing first (the export already found a data-dependent branch).
    A module that can be neither traced safely nor scripted raises ``BundleError`` saying how to fix it.
    """
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        return TorchScriptModule(module, "archive", "the source is a TorchScript archive: kept as it is")
    if script:
        return TorchScriptModule(_script(module), "script", "the export scripted the model (data-dependent branch)")
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        try:
            traced = torch.jit.trace(module, (example,), check_trace=False)
        except Exception as exc:  # tracing raises anything from the model's own code
            raise BundleError(f"torch.jit.trace failed on the model ({first_line(exc)})") from None
    messages = [str(w.message).splitlines()[0] for w in caught if w.category.__name__ == "TracerWarning"]
    findings = tuple(sorted({f"tracer: {m[:200]}" for m in messages}))
    if bakes_branch(messages):
        reason = "the trace converted a tensor to a Python value (data-dependent control flow): scripted instead"
        return TorchScriptModule(_script(module), "script", reason, findings)
    return TorchScriptModule(traced, "trace", "no data-dependent branch: traced", findings)


def _script(module: Any) -> Any:
    import torch

    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.script(module)
    except Exception as exc:
        raise BundleError(
            "the model has data-dependent control flow (an `if` on a tensor value) that tracing would bake into "
            f"one branch, and scripting it failed ({first_line(exc)}): make the branch scriptable, or rewrite it "
            "with torch.where"
        ) from None
