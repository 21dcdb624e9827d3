"""The PyTorch runs the comparisons need: the model in float64, and chosen modules' outputs on disk.

Runs on the PyTorch side (``pytorch_stage``), in the worker process when the pipeline isolates
torch; torch is imported inside the functions. The float64 run converts the module in place and
back: every float32 value is exact in float64, so the round trip gives back the same weights, bit
for bit, without a second copy of the model in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.errors import first_line


def flatten_outputs(out: Any) -> list[Any]:
    """A module's outputs (tensors, nested in tuples, lists or dicts) as a flat list, in order."""
    if isinstance(out, list | tuple):
        return [t for item in out for t in flatten_outputs(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in flatten_outputs(item)]
    return [out]


def float64_obstacle(module: Any) -> str | None:
    """Why ``module`` cannot be run in float64 by converting it (None when it can)."""
    import torch

    dtypes = {t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()}
    if dtypes - {torch.float32}:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        return f"its parameters are {names}, not float32 only"
    return None


@contextlib.contextmanager
def float64_module(module: Any) -> Iterator[Any]:
    """``module`` in float64 (parameters, buffers, and new tensors' default dtype); float32 again after."""
    import torch

    previous = torch.get_default_dtype()
    module.double()
    torch.set_default_dtype(torch.float64)
    try:
        yield module
    finally:
        torch.set_default_dtype(previous)
        module.float()


def float64_pieces(module: Any, batch: np.ndarray) -> list[np.ndarray]:
    """``batch`` as the pieces the float64 pass runs: single samples when that gives the same outputs.

    Float64 convolutions have no oneDNN kernel, and PyTorch's fallback unfolds every sample of a batch
    at once (VGG16's first layers: ~230 MB per sample). One sample at a time is the same computation only
    for a model whose samples do not see each other (no branch on a batch statistic, no fixed batch
    size), so the float32 model is asked first: split and whole must agree, or the batch stays whole.
    """
    import torch

    if batch.ndim == 0 or len(batch) < 2:
        return [batch]
    pieces = [batch[i : i + 1] for i in range(len(batch))]
    try:
        with torch.inference_mode():
            whole = flatten_outputs(module(torch.from_numpy(batch)))
            parts = [flatten_outputs(module(torch.from_numpy(p))) for p in pieces]
        joined = [torch.cat([part[i] for part in parts]) for i in range(len(whole))]
    except Exception:  # a model written for its batch size only
        return [batch]
    return pieces if all(_agree(a, b) for a, b in zip(whole, joined, strict=True)) else [batch]


def _agree(whole: Any, joined: Any) -> bool:
    import torch

    if whole.shape != joined.shape or whole.dtype != joined.dtype:
        return False
    if not whole.is_floating_point():
        return bool(torch.equal(whole, joined))
    scale = float(whole.abs().max()) if whole.numel() else 0.0
    return bool(torch.allclose(whole, joined, rtol=1e-3, atol=1e-4 * scale, equal_nan=True))


def compute_reference_float64(module: Any, samples: Sequence[Any]) -> tuple[list[list[np.ndarray]] | None, str | None]:
    """The module's outputs in float64 on the same inputs (``SampleSet``s): (outputs, None) or (None, why not)."""
    import torch

    obstacle = float64_obstacle(module)
    if obstacle:
        return None, obstacle
    outputs: list[list[np.ndarray]] = []
    split = {sample.name: float64_pieces(module, sample.data) for sample in samples}
    try:
        with float64_module(module), torch.inference_mode():
            for sample in samples:
                pieces = [flatten_outputs(module(torch.from_numpy(p).double())) for p in split[sample.name]]
                if any(t.is_floating_point() and t.dtype != torch.float64 for ts in pieces for t in ts):
                    return None, "the model returns float32 from float64 inputs (it casts inside)"
                outputs.append(
                    [np.concatenate([ts[i].detach().numpy() for ts in pieces]) for i in range(len(pieces[0]))]
                )
    except Exception as exc:  # any op without a float64 kernel, any dtype clash in the model's code
        return None, f"the model does not run in float64 ({first_line(exc, 160)})"
    return outputs, None


class _Enough(Exception):
    """Raised by a hook once every wanted module has answered: the rest of the forward pass is not needed."""


def module_calls(module: Any, batch: np.ndarray) -> dict[str, tuple[int, tuple[int, ...] | None, str]]:
    """Every submodule: (times called in one forward pass, output shape or None, class name)."""
    import torch

    seen: dict[str, list[Any]] = {}

    def hook(name: str) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            entry = seen.setdefault(name, [0, None, type(_module).__name__])
            entry[0] += 1
            entry[1] = tuple(output.shape) if isinstance(output, torch.Tensor) else None

        return record

    handles = [sub.register_forward_hook(hook(name)) for name, sub in module.named_modules() if name]
    try:
        with torch.inference_mode():
            module(torch.from_numpy(batch))
    finally:
        for handle in handles:
            handle.remove()
    return {name: (entry[0], entry[1], entry[2]) for name, entry in seen.items()}


def save_outputs(
    module: Any,
    names: Sequence[str],
    batches: Sequence[np.ndarray],
    folder: Path,
    *,
    float64: bool,
    pieces: Sequence[Sequence[np.ndarray]] | None = None,
) -> dict[str, list[Path]]:
    """Save the outputs of the submodules ``names`` on every batch to ``folder`` (``.npy``), one at a time.

    One forward pass per batch, in float32 or float64; each output is written when its module returns
    (before an in-place op after it could change it), so memory holds one activation at a time
    whatever the model's size. The pass stops once every wanted module has answered. ``pieces``
    (``float64_pieces`` of each batch) is how the float64 pass cuts the batches.
    """
    import torch

    wanted = set(names)
    index = {name: i for i, name in enumerate(names)}
    saved: dict[str, list[Path]] = {name: [] for name in names}
    answered: set[str] = set()
    tag = "f64" if float64 else "f32"

    def hook(name: str) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            path = folder / f"{tag}-{index[name]}-{len(saved[name])}.npy"
            np.save(path, output.detach().numpy())
            saved[name].append(path)
            answered.add(name)
            if answered >= wanted:
                raise _Enough

        return record

    handles = [sub.register_forward_hook(hook(name)) for name, sub in module.named_modules() if name in wanted]
    context = float64_module(module) if float64 else contextlib.nullcontext(module)
    try:
        with context, torch.inference_mode():
            for n, batch in enumerate(batches):
                for piece in pieces[n] if float64 and pieces else [batch]:
                    answered.clear()
                    tensor = torch.from_numpy(piece)
                    with contextlib.suppress(_Enough):
                        module(tensor.double() if float64 else tensor)
    finally:
        for handle in handles:
            handle.remove()
    runs = sum(len(p) for p in pieces) if float64 and pieces else len(batches)
    return {name: paths for name, paths in saved.items() if len(paths) == runs}


def load_saved(paths: Sequence[Path]) -> np.ndarray:
    """A saved output (``save_outputs``), its batches concatenated; memory-mapped when there is one."""
    if len(paths) == 1:
        return np.load(paths[0], mmap_mode="r")
    return np.concatenate([np.load(p) for p in paths])
