"""Builders for the bundle tests: a tiny VGG-shaped run folder and real photographs on disk.

The run folder follows docs/run-folder.md (schema ``onnx-pipeline/run/1``) and is built here, in
code, so the bundle tests do not depend on the export step.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

TINY_SIZE = 32
TINY_CLASSES = 10
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


def _tiny_module(classes: int, seed: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, classes),
    )
    return model.eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_run_folder(
    folder: Path,
    *,
    size: int = TINY_SIZE,
    classes: int = TINY_CLASSES,
    dynamic_batch: bool = True,
    seed: int = 0,
    module: Any = None,
    opset: int = 18,
) -> Path:
    """Export a tiny VGG-shaped model (or ``module``) into a run folder per docs/run-folder.md."""
    import onnx
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    model = module if module is not None else _tiny_module(classes, seed)
    example = torch.randn(1, 3, size, size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    onnx_program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        verbose=False,
    )
    assert onnx_program is not None
    model_path = folder / "model.onnx"
    onnx_program.save(str(model_path), external_data=False)
    proto = onnx.load(str(model_path), load_external_data=False)
    batch: Any = "batch" if dynamic_batch else 1
    out_features = int(model(example).shape[1])
    manifest = {
        "schema": "onnx-pipeline/run/1",
        "model_file": "model.onnx",
        "external_data": None,
        "inputs": [{"name": "input", "shape": [batch, 3, size, size], "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": [batch, out_features], "dtype": "float32"}],
        "dynamic_batch": dynamic_batch,
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": proto.ir_version,
        "task": "classification",
        "preprocessing": {
            "resize": size + size // 7,
            "crop": [size, size],
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "color": "RGB",
            "layout": "NCHW",
            "interpolation": "bilinear",
            "scale": 1.0 / 255.0,
            "dtype": "float32",
            "extra": {},
        },
        "labels": [f"class_{i}" for i in range(out_features)],
        "source": {"model": "tiny-vgg", "kind": "builtin", "weights": "random", "seed": seed, "weights_sha256": None},
        "exporter": {"requested": "dynamo", "used": "dynamo", "fallbacks": [], "findings": []},
        "simplify": None,
        "verification": None,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "python": platform.python_version()},
        "timings": {},
        "files": {"model.onnx": _sha256(model_path)},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder
