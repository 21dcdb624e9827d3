"""Shared fixtures: a tiny exported run folder (once per session) and real photographs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

from onnx_pipeline.config import resolve_pipeline_config

TESTS = Path(__file__).parent
CONTROL_FLOW = f"{TESTS / 'models' / 'control_flow.py'}:build"


def tiny_config(output: Path, **cli: dict) -> object:
    layers = {"": {"output": output}, "model": {"model": "tiny-vgg", "weights": "random"}}
    for section, values in cli.items():
        layers.setdefault(section, {}).update(values)
    return resolve_pipeline_config(cli=layers)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder exported from tiny-vgg with random weights (do not modify: copy it)."""
    from onnx_pipeline.pipeline import run_export

    output = tmp_path_factory.mktemp("tiny") / "run"
    run_export(tiny_config(output))
    return output


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs from scikit-image, written as JPEG and PNG files."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera"):
        array = np.asarray(getattr(data, name)())
        suffix = ".png" if name == "camera" else ".jpg"
        Image.fromarray(array).save(folder / f"{name}{suffix}")
    return folder
