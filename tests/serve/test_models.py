"""How served models are named, and what the server configuration refuses."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from onnx_pipeline.artifacts.triton import model_name as triton_model_name
from onnx_pipeline.errors import InputError
from onnx_pipeline.manifest import TargetInfo
from onnx_pipeline.runtime import Bundle
from onnx_pipeline.serve import ServeConfig
from onnx_pipeline.serve.models import parse_bundle_argument, served_names


@pytest.fixture(scope="module")
def loaded(served_bundle: Path) -> Bundle:
    return Bundle.load(served_bundle)


def variant(bundle: Bundle, target: str, source: str | None = None) -> Any:
    """A stand-in for a bundle of another target (and source model), sharing ``bundle``'s manifest otherwise."""
    run = dict(bundle.manifest.run)  # type: ignore[union-attr]
    if source is not None:
        run["source"] = {**run["source"], "model": source}
    manifest = dataclasses.replace(bundle.manifest, target=TargetInfo(name=target), run=run)  # type: ignore[arg-type]
    return SimpleNamespace(manifest=manifest, root=bundle.root)


def test_a_model_is_served_under_its_triton_name(loaded: Bundle) -> None:
    assert served_names([(None, loaded)]) == ["tiny-vgg"] == [triton_model_name("tiny-vgg")]
    factory = variant(loaded, "cpu-x86_64", source="my_models.py:build")
    assert served_names([(None, factory)]) == ["my_models_py_build"]


def test_names_that_collide_are_qualified_by_target(loaded: Bundle) -> None:
    arm = variant(loaded, "cpu-arm64")
    assert served_names([(None, loaded), (None, arm)]) == ["tiny-vgg-cpu-x86_64", "tiny-vgg-cpu-arm64"]
    assert served_names([("fast", loaded), (None, arm)]) == ["fast", "tiny-vgg"]
    with pytest.raises(InputError, match="NAME=PATH"):
        served_names([(None, loaded), (None, loaded)])
    with pytest.raises(InputError, match="'a'"):
        served_names([("a", loaded), ("a", arm)])


def test_bundle_arguments(tmp_path: Path) -> None:
    assert parse_bundle_argument("vgg=runs/x") == ("vgg", Path("runs/x"))
    assert parse_bundle_argument("runs/x") == (None, Path("runs/x"))
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert parse_bundle_argument(str(odd)) == (None, odd)  # an existing path wins
    with pytest.raises(InputError, match="not a model name"):
        parse_bundle_argument("a/b=runs/x")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"bundles": ()}, "at least one bundle"),
        ({"port": 70000}, "--port"),
        ({"max_batch_size": 0}, "--max-batch-size"),
        ({"max_batch_size": 5000}, "above 1024"),
        ({"max_queue_size": 0}, "--max-queue-size"),
        ({"max_body_bytes": 0}, "--max-body-mb"),
        ({"max_queue_delay_ms": float("nan")}, "--max-queue-delay-ms"),
        ({"max_queue_delay_ms": -1.0}, "--max-queue-delay-ms"),
    ],
)
def test_config_refuses_nonsense(options: dict[str, Any], words: str) -> None:
    with pytest.raises(InputError, match=words):
        ServeConfig(**{"bundles": ("b",), **options})
