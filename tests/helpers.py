"""What the tests share: the one tiny CNN, the one photo writer, run folders and builder contexts made in code.

A test never imports another test; it imports this module (and fixtures come from conftest.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.imagespec import PreprocessSpec

#: skimage.data photographs (RGB unless noted); each one is a real photograph, shipped with scikit-image
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cat",
    "coins",  # greyscale: converted to RGB by the loader
    "camera",  # greyscale
    "moon",  # greyscale
    "page",  # greyscale
)
TINY_CLASSES = 10
TESTS = Path(__file__).parent
REPO = TESTS.parent
HARDWARE = REPO / "hardware"
#: the seed notebook's ControlFlowModel (a branch on the sign of the input's sum), as a factory reference
CONTROL_FLOW = f"{TESTS / 'models' / 'control_flow.py'}:build"


def tiny_config(output: Path, **cli: dict[str, Any]) -> Any:
    """The PipelineConfig of exporting tiny-vgg (random weights) to ``output``, with CLI-layer overrides."""
    from onnx_pipeline.config import resolve_pipeline_config

    layers: dict[str, dict[str, Any]] = {"": {"output": output}, "model": {"model": "tiny-vgg", "weights": "random"}}
    for section, values in cli.items():
        layers.setdefault(section, {}).update(values)
    return resolve_pipeline_config(cli=layers)


def write_photos(folder: Path, names: tuple[str, ...] = PHOTOS) -> list[Path]:
    """Write skimage.data photographs as PNG/JPEG files into ``folder``; returns their paths."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, name in enumerate(names):
        array = np.asarray(getattr(data, name)())
        if array.dtype != np.uint8:
            array = (255 * (array - array.min()) / max(float(array.max() - array.min()), 1e-9)).astype(np.uint8)
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[:, :, :3]
        suffix = ".jpg" if index % 2 else ".png"
        path = folder / f"{index:02d}-{name}{suffix}"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def tiny_module(seed: int = 0, classes: int = TINY_CLASSES) -> Any:
    """The tiny VGG-shaped model of the registry (``tiny-vgg``), seeded, in eval mode."""
    import torch

    from onnx_pipeline.sources import build_tiny_vgg

    torch.manual_seed(seed)
    return build_tiny_vgg(classes).eval()


def rescaled_vgg16() -> Any:
    """torchvision VGG16, seeded random weights rescaled to unit activations as ``--weights random`` does."""
    import torch
    from torchvision.models import vgg16

    from onnx_pipeline.sources.weights import rescale_random_weights

    torch.manual_seed(0)
    model = vgg16().eval()
    rescale_random_weights(model, torch.randn(2, 3, 224, 224))
    return model


def export_onnx(
    module: Any, path: Path, *, size: int = 32, dynamic_batch: bool = True, opset: int = 18, example: Any = None
) -> Path:
    """Export ``module`` (one NCHW image input: ``example``, or random 3×size×size) with the dynamo exporter."""
    import torch

    if example is None:
        example = torch.randn(2 if dynamic_batch else 1, 3, size, size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        verbose=False,
    )
    assert program is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    return path


def tiny_spec(size: int) -> PreprocessSpec:
    return PreprocessSpec(resize=size + size // 7, crop=(size, size))


def run_manifest_for(folder: Path, model_file: str = "model.onnx", **fields: Any) -> Any:
    """A ``RunManifest`` describing ``folder/model_file`` (written with ``.write(folder)`` by the caller)."""
    from onnx_pipeline.manifest import RUN_UNLISTED, ModelSource, RunManifest, hash_folder
    from onnx_pipeline.onnxfile import describe_model

    info = describe_model(folder / model_file)
    classes = info.outputs[0].shape[-1]
    values: dict[str, Any] = {
        **_model_fields(info),
        "labels": tuple(f"class_{i}" for i in range(classes)) if isinstance(classes, int) else None,
        "files": hash_folder(folder, exclude=RUN_UNLISTED),
        "model_file": model_file,
        "opset": info.opset,
        "ir_version": info.ir_version,
        "input_shape": (1, *(int(d) for d in info.inputs[0].shape[1:])),
        "source": ModelSource(model="tiny-vgg", kind="builtin", weights="random"),
    }
    values.update(fields)
    return RunManifest(**values)


def make_run_folder(
    folder: Path, *, size: int = 32, dynamic_batch: bool = True, seed: int = 0, module: Any = None, opset: int = 18
) -> Path:
    """A run folder around a tiny exported model (or ``module``), its manifest written by ``RunManifest``."""
    export_onnx(module if module is not None else tiny_module(seed), folder / "model.onnx", size=size,
                dynamic_batch=dynamic_batch, opset=opset)  # fmt: skip
    run_manifest_for(folder).write(folder)
    return folder


def build_artifact(
    model_path: Path,
    target: Any,
    kind: str,
    calibration: np.ndarray | None,
    heldout: np.ndarray,
    out: Path,
    *,
    labels: tuple[str, ...] | None = None,
    synthetic: bool = True,
) -> Any:
    """Run one artifact builder on ``model_path`` with in-memory data, as the bundle step would; returns its result."""
    from onnx_pipeline.artifacts import load_builder
    from onnx_pipeline.artifacts.base import BuildContext, run_batches
    from onnx_pipeline.bundling.data import BundleData
    from onnx_pipeline.onnxfile import infer_shapes, load_parts
    from onnx_pipeline.runtime.session import create_session

    folder = model_path.parent
    run = run_manifest_for(folder, model_path.name, labels=labels)
    parts = load_parts(model_path)
    infer_shapes(parts.skeleton)
    info = {"synthetic": synthetic, "samples": len(heldout)}
    data = BundleData(calibration, None if calibration is None else info, heldout, info)
    session = create_session(model_path)
    per_sample = [run_batches(session, heldout[i : i + 1]) for i in range(len(heldout))]
    reference = [np.concatenate([r[j] for r in per_sample]) for j in range(len(per_sample[0]))]
    out.mkdir(parents=True, exist_ok=True)
    ctx = BuildContext(
        target=target,
        out=out,
        run=run,
        model_path=model_path,
        parts=parts,
        data=data,
        reference=tuple(reference),
        output_names=tuple(o.name for o in parts.skeleton.graph.output),
        dynamic_batch=run.dynamic_batch and target.batch == "dynamic",
    )
    return load_builder(kind).build(ctx)


def invoke(*args: str) -> Any:
    """Run the CLI in-process (Typer's CliRunner) with ``args``."""
    from typer.testing import CliRunner

    from onnx_pipeline.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_user_error(result: Any, *fragments: str, code: int = 2) -> None:
    """The CLI failed with ``code``, one ``error:`` line on stderr holding every fragment, and no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("FAILED in")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def rewrite_manifest(folder: Path, edit: Any) -> None:
    """Apply ``edit(data)`` to ``folder/manifest.json`` and re-sign its content digest, as a forger would."""
    import json

    from onnx_pipeline.manifest import content_digest

    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    data["content_sha256"] = content_digest(data)
    path.write_text(json.dumps(data))


#: FLOPs per image of ``tiny_module()`` at 3×64×64 (2·MACs of its three convolutions and two Linear layers)
TINY_FLOPS = 2 * 8 * 3 * 9 * 64 * 64 + 2 * 8 * 8 * 9 * 64 * 64 + 2 * 16 * 8 * 9 * 32 * 32 + 2 * 256 * 32 + 2 * 32 * 10
#: bytes of those layers' float32 weights
TINY_WEIGHT_BYTES = 4 * (8 * 3 * 9 + 8 * 8 * 9 + 16 * 8 * 9 + 256 * 32 + 32 * 10)
LABELS = tuple(f"class_{i}" for i in range(TINY_CLASSES))


def write_bundle_manifest(folder: Path, models: list[dict[str, Any]], **fields: Any) -> Any:
    """Write ``folder/manifest.json`` for model files already in ``folder`` through ``BundleManifest`` (hashing
    every file); ``fields`` override the defaults (a tiny image classifier on the CPU provider)."""
    from onnx_pipeline.manifest import RUN_UNLISTED, BundleManifest, ModelRecord, TargetInfo, hash_folder
    from onnx_pipeline.onnxfile import describe_model
    from onnx_pipeline.runtime.session import parse_providers

    info = describe_model(folder / models[0]["file"])
    values: dict[str, Any] = {
        **_model_fields(info),
        "labels": LABELS,
        "files": hash_folder(folder, exclude=RUN_UNLISTED),
        "target": TargetInfo(name="test-cpu"),
        "models": tuple(ModelRecord(**{"kind": "fp32-optimized", **m}) for m in models),
        "execution_providers": ({"name": "CPUExecutionProvider", "options": {}},),
        "session_options": {"graph_optimization_level": "all", "intra_op_num_threads": 1},
    }
    if isinstance(fields.get("preprocessing"), dict):
        fields["preprocessing"] = PreprocessSpec.from_dict(fields["preprocessing"])
    if "execution_providers" in fields:
        parsed = parse_providers(fields["execution_providers"])
        fields["execution_providers"] = tuple({"name": n, "options": o} for n, o in parsed)
    values.update(fields)
    manifest = BundleManifest(**values)
    manifest.write(folder)
    return manifest


def make_tiny_bundle(folder: Path, *, with_int8: bool = False) -> Path:
    """A hand-made bundle of ``tiny_module()`` at 64×64 (fp32, plus an int8 QDQ model when asked)."""
    folder.mkdir(parents=True)
    export_onnx(tiny_module(), folder / "model.onnx", size=64)
    models = [{"file": "model.onnx", "precision": "fp32"}]
    if with_int8:
        _quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
        models.append({"file": "model.int8.onnx", "precision": "int8", "kind": "int8-qdq"})
    (folder / "README.md").write_text("tiny test bundle\n", encoding="utf-8")
    write_bundle_manifest(folder, models)
    return folder


def _quantize_int8(fp32: Path, int8: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, 64, 64), dtype=np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def digits_split() -> tuple[Any, Any, Any, Any]:
    """scikit-learn's 8x8 digits upscaled to 16x16 in [-1, 1], NCHW: (x_train, y_train, x_test, y_test), 1300 train."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images.astype(np.float32) / 16.0, np.ones((2, 2), dtype=np.float32))
    images = ((images - 0.5) / 0.5)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1300], order[1300:]
    return images[train], digits.target[train], images[test], digits.target[test]


def trained_digits_cnn(x: Any, y: Any, epochs: int = 6) -> Any:
    """A small VGG-style CNN (3 convolutions, 2 pools, 2 linear layers) trained on ``digits_split``, eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    for _epoch in range(epochs):
        for i in torch.randperm(len(xt)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[i]), yt[i]).backward()
            optimizer.step()
    return model.eval()


def _model_fields(info: Any) -> dict[str, Any]:
    """The manifest fields a tiny classifier's graph decides (``describe_model``), and empty versions/timings."""
    from onnx_pipeline.manifest import TensorSpec

    return {
        "inputs": tuple(TensorSpec(t.name, t.shape, t.dtype) for t in info.inputs),
        "outputs": tuple(TensorSpec(t.name, t.shape, t.dtype) for t in info.outputs),
        "dynamic_batch": isinstance(info.inputs[0].shape[0], str),
        "task": "classification",
        "preprocessing": tiny_spec(int(info.inputs[0].shape[-1])),
        "versions": {},
        "timings": {},
    }


def check_moved_bundles(
    run: Path, targets: Sequence[str], dest: Path, photo: Path, cwd: Path, *, keep_run: bool = False
) -> None:
    """Move ``run``'s bundles of ``targets`` to ``dest`` and delete ``run`` (unless ``keep_run``: then only
    those bundles leave it), and from ``cwd`` (another working directory) each moved bundle verifies
    (hashes, fidelity) and predicts ``photo`` with three classes. Moved, not copied: nothing is left at
    the bundle's first place, and a test of a model over 2 GB does not hold each bundle twice on disk."""
    import os
    import shutil

    from onnx_pipeline import api

    dest.mkdir(parents=True, exist_ok=True)
    for target in targets:
        shutil.move(run / "bundles" / target, dest / target)
    if not keep_run:
        shutil.rmtree(run)
    previous = os.getcwd()
    try:
        os.chdir(cwd)
        for target in targets:
            assert api.verify(dest / target).status == "passed", target
            (prediction,) = api.predict(dest / target, [photo], top_k=3)
            assert len(prediction.top_k) == 3 and 0.0 <= prediction.probability <= 1.0, target
    finally:
        os.chdir(previous)


def outlier_module() -> Any:
    """conv1 → relu → conv2 (channel 0 ×1e4) → conv3 (reads channel 0 ×1e-4) → relu → pool → fc.

    conv3 is the fragile layer: per-tensor int8 of its input (conv2's output) crushes every channel but
    the outlier one, which conv3 all but ignores."""
    import torch
    from torch import nn

    class Outliers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: Any) -> Any:
            x = torch.relu(self.conv1(x))
            x = self.conv3(self.conv2(x))
            return self.fc(torch.flatten(torch.mean(torch.relu(x), dim=(2, 3), keepdim=True), 1))

    torch.manual_seed(0)
    module = Outliers().eval()
    with torch.no_grad():
        module.conv2.weight[0] *= 1e4
        module.conv2.bias[0] *= 1e4
        module.conv3.weight[:, 0] *= 1e-4
    return module


def tight_profile(tmp_path: Path, fraction: float = 0.5) -> Path:
    """A user profile: cpu-x86_64 (int8 only) whose int8 thresholds ``outlier_module`` makes plain int8 miss,
    with a fallback budget of ``fraction``."""
    import re

    from onnx_pipeline.targets import load_target

    text = load_target("cpu-x86_64").source.read_text(encoding="utf-8")
    text = re.sub(r'^name = ".*"$', 'name = "tight"', text, count=1, flags=re.M)
    text = text.replace('artifacts = ["fp32-optimized", "ort", "int8-qdq"]', 'artifacts = ["int8-qdq"]')
    head, int8 = text.split("[fidelity.int8]")
    int8 = re.sub(r"min_sqnr_db = [0-9.]+", "min_sqnr_db = 25.0", int8)
    int8 = re.sub(r"min_cosine = [0-9.]+", "min_cosine = 0.995", int8)
    path = tmp_path / "tight.toml"
    int8 = int8.replace("max_float_layers_fraction = 0.1", f"max_float_layers_fraction = {fraction}")
    assert f"max_float_layers_fraction = {fraction}" in int8
    path.write_text(f"{head}[fidelity.int8]{int8}", encoding="utf-8")
    return path


#: runs its arguments as a command and writes the kernel's peak RSS of that command (and the processes it
#: waited for) on its last stderr line. A fresh, small process in between is needed: the kernel counts the
#: memory of the process that forked (vfork) a command in the command's own peak, so measured straight
#: from pytest the figure would be pytest's peak so far, not the command's.
_PEAK_WRAPPER = r"""
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
sys.stderr.write("\n__maxrss_kb__=%d\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def run_with_peak_rss(command: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in bytes of ``command`` and its workers) of ``command``."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *command], capture_output=True, text=True, env=env)
    stderr, _, last = proc.stderr.rstrip().rpartition("\n")
    if not last.startswith("__maxrss_kb__="):
        raise AssertionError(f"the peak RSS wrapper failed: {proc.stderr[-2000:]}")
    return proc.returncode, proc.stdout, stderr, int(last.split("=", 1)[1]) * 1024.0
