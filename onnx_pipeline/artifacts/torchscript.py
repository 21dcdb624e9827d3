"""``torchscript``: ``model.pt`` (TorchScript) and a C++ program that runs it with LibTorch.

``model.pt`` is traced, or scripted where the trace would bake a data-dependent branch (the rule of
``onnx_pipeline.tracing``, which the export step applies too; a run the export scripted is scripted
here without tracing). It is saved, loaded back and judged against the eager PyTorch model on the
held-out inputs with the target's fp32 thresholds (``ctx.check``'s verifier), and against the run's
ONNX model on the batch (what ``verify BUNDLE`` re-checks with the stored reference outputs): a
TorchScript model that disagrees with either fails the bundle.

``cpp/`` holds ``classify.cpp`` and a ``CMakeLists.txt`` that builds it against the LibTorch inside the
installed torch wheel; it reads a tensor file (``onnx-pipeline preprocess``, ``runtime.tensorfile``)
and prints the top-k as JSON with the names of ``labels.txt``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, BundleModel, timed
from onnx_pipeline.bundling.fidelity import judge
from onnx_pipeline.errors import BundleError, InputError, first_line
from onnx_pipeline.files import to_jsonable

SPEC = BuilderSpec("torchscript", "fp32", order=5, rewrites_opset=True, torch_module=True)

MODEL_FILE = "model.pt"
LABELS_FILE = "labels.txt"
CPP_FILES = ("CMakeLists.txt", "classify.cpp")
TEMPLATES = Path(__file__).parent / "_templates"
#: what verify and the fidelity record name as the runtime of ``model.pt``
RUNTIME = "torch.jit (CPU)"


def build(ctx: BuildContext) -> ArtifactResult:
    """Write ``model.pt``, ``labels.txt`` and ``cpp/``; judge ``model.pt`` against eager PyTorch and the run's model."""
    import torch

    timings: dict[str, float] = {}
    if ctx.torch_model is None:  # the bundle step loads it for every builder whose SPEC says torch_module
        raise BundleError("the torchscript artifact needs the run's PyTorch model, and none was loaded")
    from onnx_pipeline.tracing import quiet_jit, to_torchscript

    start = time.perf_counter()
    heldout = ctx.data.heldout
    example = torch.from_numpy(np.ascontiguousarray(heldout[: min(2, len(heldout))]))
    converted = to_torchscript(ctx.torch_model, example, script=ctx.run.exporter.get("used") == "torchscript-script")
    with quiet_jit():
        torch.jit.save(converted.module, str(ctx.out / MODEL_FILE))
    timed(timings, "convert", start)

    start = time.perf_counter()
    # Each held-out input alone (batch 1, as the C++ program and most requests run it): a baked branch shows
    # on the inputs that take the other one. The batch, as verify runs it, is judged against the run's model.
    with torch.no_grad():
        eager = _concat(
            [_as_arrays(ctx.torch_model(torch.from_numpy(heldout[i : i + 1]))) for i in range(len(heldout))]
        )
    alone, runtime = run_model(ctx.out / MODEL_FILE, heldout, one_by_one=True)
    outputs, _ = run_model(ctx.out / MODEL_FILE, heldout)
    names = list(ctx.output_names)
    thresholds = ctx.thresholds(SPEC.precision)
    fidelity = judge(MODEL_FILE, "fp32", names, eager, alone, thresholds, ctx.data.description, provider=runtime)
    against_run = judge(
        MODEL_FILE, "fp32", names, list(ctx.reference), outputs, thresholds, ctx.data.description, provider=runtime
    )
    timed(timings, "fidelity", start)
    # Missing the run's model (what verify re-checks) fails the bundle too, with the same figures
    # (e.g. a PyTorch model rebuilt from the source that is not the one exported).
    failures = tuple(f"{f} (against the run's ONNX model)" for f in against_run.failures)
    fidelity = dataclasses.replace(fidelity, failures=fidelity.failures + failures)
    has_labels = _write_files(ctx)
    section = {
        "file": MODEL_FILE,
        "method": converted.method,
        "reason": converted.reason,
        "findings": list(converted.findings),
        "torch": torch.__version__,
        "cxx11_abi": bool(torch.compiled_with_cxx11_abi()),
        "example_input_shape": list(example.shape),
        #: what ``models[].fidelity`` compares (verify re-runs the batch against the stored reference outputs)
        "fidelity_against": "eager PyTorch, each held-out input alone (batch 1)",
        "against_run_model": to_jsonable(against_run.outputs),
        "labels": LABELS_FILE if has_labels else None,
        "cpp": {"files": [f"cpp/{name}" for name in (*CPP_FILES, "README.md")], "input": "tensor file"},
    }
    model = BundleModel(MODEL_FILE, SPEC.kind, "fp32", fidelity, format="torchscript")
    return ArtifactResult(
        kind=SPEC.kind,
        models=(model,),
        section=section,
        timings=timings,
        readme=_readme(converted.method, has_labels),
        findings=converted.findings,
    )


def run_model(path: Path, inputs: np.ndarray, *, one_by_one: bool = False) -> tuple[list[np.ndarray], str]:
    """Run the TorchScript file ``path`` on ``inputs`` on the CPU: its outputs, and what ran them.

    In one batch, or ``one_by_one`` (each input alone, outputs concatenated).
    Used by the builder and by ``onnx-pipeline verify BUNDLE``. ``torch.jit.load`` runs TorchScript (a
    language of registered operators), not pickled Python.
    """
    import torch

    from onnx_pipeline.tracing import quiet_jit

    try:
        with quiet_jit():
            module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
        batch = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        chunks = [batch[i : i + 1] for i in range(len(batch))] if one_by_one else [batch]
        with torch.no_grad():
            results = [_as_arrays(module(chunk)) for chunk in chunks]
    except Exception as exc:  # torch raises RuntimeError and others for damaged archives and bad shapes
        raise BundleError(f"torch could not load and run {path.name} ({first_line(exc)})") from None
    return _concat(results), RUNTIME


def _concat(results: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]


def _as_arrays(result: Any) -> list[np.ndarray]:
    items = result if isinstance(result, list | tuple) else [result]
    return [item.detach().cpu().numpy() for item in items]


def _write_files(ctx: BuildContext) -> bool:
    """``labels.txt`` (when the run has labels) and ``cpp/``; returns whether labels were written."""
    labels = ctx.run.labels
    if labels is not None:
        if any("\n" in label or "\r" in label for label in labels):
            raise InputError("a class label holds a line break: labels.txt keeps one label per line")
        (ctx.out / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    cpp = ctx.out / "cpp"
    cpp.mkdir()
    for name in CPP_FILES:
        shutil.copyfile(TEMPLATES / name, cpp / name)
    (cpp / "README.md").write_text(cpp_readme(labels is not None), encoding="utf-8")
    return labels is not None


def cpp_readme(has_labels: bool) -> str:
    """The commands that build ``classify`` and run it on an image, from the bundle folder."""
    labels = f" --labels {LABELS_FILE}" if has_labels else ""
    return f"""# classify: model.pt from C++ with LibTorch

`classify.cpp` loads `../{MODEL_FILE}` with LibTorch, runs it on one preprocessed input and prints the
top-k classes as JSON (`class_id`, `class_name`, `probability`: softmax of the outputs, as
`onnx-pipeline predict` computes them). It builds against the LibTorch inside the installed PyTorch
wheel (no download, no CUDA toolkit): `CMakeLists.txt` finds it through the Python you name. LibTorch's
headers need a C++20 compiler (g++ 10 or later) and CMake 3.18 or later.

From the bundle folder (build outside it: a file added to the bundle is reported by `verify`):

```bash
cmake -S cpp -B /tmp/classify-build -DPython3_EXECUTABLE=$(which python)
cmake --build /tmp/classify-build -j 2
onnx-pipeline preprocess photo.jpg . -o /tmp/photo.bin      # the bundle's preprocessing, as a tensor file
/tmp/classify-build/classify {MODEL_FILE} /tmp/photo.bin{labels} --top-k 5
```

`--repeat N` times N more runs (after warm-up) and adds `latency_ms` to the JSON.

The tensor file is a 24-byte header (`OPTENSOR`, version 1, dtype 1 = float32, the number of
dimensions, a reserved 0; each uint32 little-endian), the dimensions as int64, then the float32 data in
C order (`onnx_pipeline/runtime/tensorfile.py`). Any program can write one for a batch of inputs.
"""


def _readme(method: str, has_labels: bool) -> tuple[str, ...]:
    how = {
        "trace": "traced",
        "script": "scripted (a trace would bake a data-dependent branch)",
        "archive": "the source's TorchScript archive as it was",
    }[method]
    lines = [
        f"- `{MODEL_FILE}`: the model in TorchScript, {how}; load it with `torch.jit.load` or LibTorch",
        "- `cpp/`: `classify.cpp` and `CMakeLists.txt`, a LibTorch program printing the top-k as JSON "
        "(build and run: `cpp/README.md`)",
    ]
    if has_labels:
        lines.append(f"- `{LABELS_FILE}`: the class names, one per line (class id = line number - 1)")
    return tuple(lines)
