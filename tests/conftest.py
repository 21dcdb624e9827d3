"""Shared fixtures: a tiny exported run folder (once per session) and real photographs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

# A suite started in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored,
# and so would every command the tests start: Python leaves an inherited ignored SIGINT alone, and the
# tests that interrupt an export with SIGINT would see it run on. The commands must see Ctrl-C as a
# user's terminal delivers it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from tests.helpers import tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder exported from tiny-vgg with random weights (do not modify: copy it)."""
    from onnx_pipeline.pipeline import run_export

    output = tmp_path_factory.mktemp("tiny") / "run"
    run_export(tiny_config(output))
    return output


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs from scikit-image (colour and greyscale), written as JPEG and PNG files."""
    from tests.helpers import write_photos

    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-made fp32 bundle of the tiny model at 64×64 (do not modify: copy it)."""
    from tests.helpers import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle") / "bundle")


@pytest.fixture(scope="session")
def tiny_bundle_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with an int8 QDQ model beside the fp32 one (do not modify: copy it)."""
    from tests.helpers import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle-int8") / "bundle", with_int8=True)


@pytest.fixture(scope="session")
def cpu_bundle(tiny_run: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's cpu-x86_64 bundle (fp32-optimized, ORT format, int8 QDQ), calibrated on real
    photographs by ``api.bundle`` (do not modify: copy it)."""
    import shutil

    from onnx_pipeline import api

    run = tmp_path_factory.mktemp("cpu-bundle") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("bundles"))
    api.bundle(run, ["cpu-x86_64"], calibration_images=photos)
    return run / "bundles" / "cpu-x86_64"


@pytest.fixture(scope="session")
def torch_bundles(tiny_run: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run (copied) with its torchscript and torchserve bundles, held out on real photographs,
    built by ``api.bundle`` from the run folder (do not modify: copy it). Returns the run folder."""
    import shutil

    from onnx_pipeline import api

    run = tmp_path_factory.mktemp("torch-bundles") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("bundles"))
    api.bundle(run, ["torchscript", "torchserve"], heldout_images=photos)
    return run
