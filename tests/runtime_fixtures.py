"""A tiny VGG-shaped model exported to ONNX and wrapped as a bundle, for the runtime and bench tests.

Built once per test session (the export takes a few seconds) in a private temp folder; tests get
their own copy with ``copy_tiny_bundle`` so they may tamper with it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.files import write_json
from onnx_pipeline.imagespec import PreprocessSpec
from onnx_pipeline.manifest import hash_folder as hash_tree

NUM_CLASSES = 10
LABELS = [f"class_{i}" for i in range(NUM_CLASSES)]
TINY_SPEC = PreprocessSpec(resize=72, crop=(64, 64))
TINY_INPUT = (3, 64, 64)
# conv1 3→8 3×3 on 64×64, pool, conv2 8→16 3×3 on 32×32, pool, avgpool to 2×2, linear 64→10
TINY_FLOPS = 2 * 8 * 3 * 9 * 64 * 64 + 2 * 16 * 8 * 9 * 32 * 32 + 2 * 64 * NUM_CLASSES

_CACHE: dict[str, Path] = {}


def build_tiny_model(seed: int = 0) -> Any:
    """A seeded Conv-ReLU-MaxPool ×2, AdaptiveAvgPool, Flatten, Linear classifier (10 classes)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, NUM_CLASSES),
    )
    return model.eval()


def export_tiny_model(path: Path, seed: int = 0) -> Path:
    """Export the tiny model with the dynamo exporter: input ``input``, output ``output``, dynamic ``batch``."""
    import torch

    model = build_tiny_model(seed)
    example = torch.randn(2, *TINY_INPUT)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: batch},),
        external_data=False,
        verbose=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)
    return path


def _quantize_int8(fp32: Path, int8: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self._items = iter([{"input": rng.standard_normal((1, *TINY_INPUT), dtype=np.float32)} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    quantize_static(
        str(fp32),
        str(int8),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def write_manifest(folder: Path, models: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Write ``folder/manifest.json`` in the bundle format, hashing every file already in ``folder``."""
    manifest: dict[str, Any] = {
        "schema": "onnx-pipeline/bundle/1",
        "target": {"name": "test-cpu"},
        "models": models,
        "inputs": [{"name": "input", "shape": ["batch", *TINY_INPUT], "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": ["batch", NUM_CLASSES], "dtype": "float32"}],
        "dynamic_batch": True,
        "preprocessing": TINY_SPEC.to_dict(),
        "labels": LABELS,
        "execution_providers": [["CPUExecutionProvider", {}]],
        "session_options": {"graph_optimization_level": "all", "intra_op_num_threads": 1},
    }
    manifest.update(extra)
    manifest["files"] = hash_tree(folder, exclude=("manifest.json",))
    write_json(folder / "manifest.json", manifest)
    return manifest


def _base_dir() -> Path:
    if "base" not in _CACHE:
        base = Path(tempfile.mkdtemp(prefix="onnx-pipeline-runtime-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        _CACHE["base"] = base
    return _CACHE["base"]


def tiny_bundle(with_int8: bool = False) -> Path:
    """The shared tiny bundle (fp32, plus an int8 QDQ model when asked); do not modify it."""
    key = "bundle-int8" if with_int8 else "bundle"
    if key not in _CACHE:
        folder = _base_dir() / key
        folder.mkdir()
        export_tiny_model(folder / "model.onnx")
        models = [{"file": "model.onnx", "precision": "fp32", "format": "onnx"}]
        if with_int8:
            _quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
            models.append({"file": "model.int8.onnx", "precision": "int8", "format": "onnx"})
        (folder / "README.md").write_text("tiny test bundle\n", encoding="utf-8")
        write_manifest(folder, models)
        _CACHE[key] = folder
    return _CACHE[key]


def copy_tiny_bundle(dest: Path, with_int8: bool = False) -> Path:
    """A private copy of the tiny bundle under ``dest`` that a test may tamper with."""
    target = dest / "bundle"
    shutil.copytree(tiny_bundle(with_int8), target)
    return target


def tiny_run_folder(dest: Path) -> Path:
    """A run folder (``docs/run-folder.md`` layout, trimmed) holding the tiny model."""
    folder = dest / "run"
    folder.mkdir()
    shutil.copy2(tiny_bundle() / "model.onnx", folder / "model.onnx")
    manifest = {
        "schema": "onnx-pipeline/run/1",
        "model_file": "model.onnx",
        "external_data": None,
        "inputs": [{"name": "input", "shape": ["batch", *TINY_INPUT], "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": ["batch", NUM_CLASSES], "dtype": "float32"}],
        "dynamic_batch": True,
        "task": "classification",
        "preprocessing": TINY_SPEC.to_dict(),
        "labels": LABELS,
        "files": hash_tree(folder, exclude=("manifest.json",)),
    }
    write_json(folder / "manifest.json", manifest)
    return folder
