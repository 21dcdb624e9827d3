"""Build the model a ``ModelConfig`` names, with its weights; rebuild the model a manifest's source describes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_pipeline.config import ModelConfig
from onnx_pipeline.errors import InputError, ModelSourceError, first_line
from onnx_pipeline.files import sha256_file
from onnx_pipeline.sources.registry import TINY_VGG_LABELS, ModelSpec, resolve_spec
from onnx_pipeline.sources.weights import (
    _load_imagenet,
    _load_state_dict_file,
    _rescale_sample,
    _rescale_samples,
    rescale_random_weights,
)

if TYPE_CHECKING:
    from onnx_pipeline.manifest import BundleManifest, ModelSource, RunManifest

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A built module in eval mode, its weights applied, with what travels into the run folder."""

    module: Any  # torch.nn.Module (typed loosely so this module imports without torch)
    spec: ModelSpec
    input_shape: tuple[int, ...]
    labels: list[str] | None
    source: dict[str, Any]
    findings: list[str] = field(default_factory=list)


def load_model(config: ModelConfig, spec: ModelSpec | None = None) -> LoadedModel:
    """Build the model named by ``config``, apply its weights, put it in eval mode."""
    import torch

    spec = spec or resolve_spec(config.model)
    weights = config.weights or spec.defaults.get("model", {}).get("weights", "random")
    input_shape = tuple(config.input_shape) if config.input_shape else spec.input_shape
    torch.manual_seed(config.seed)
    module = spec.build()
    if not isinstance(module, torch.nn.Module):
        raise ModelSourceError(f"{spec.location} returned {type(module).__name__}, not a torch.nn.Module")
    findings: list[str] = []
    weights_sha256: str | None = None
    weights_file: str | None = None
    if weights == "imagenet":
        if spec.kind != "torchvision":
            raise ModelSourceError("--weights imagenet is only for torchvision models: give --weights PATH or random")
        weights_sha256, weights_file = _load_imagenet(module, spec)
    elif weights in ("random", "embedded"):
        if weights == "embedded" and spec.kind != "torchscript":
            raise ModelSourceError("--weights embedded is only for TorchScript archives")
        if spec.kind == "torchscript":
            weights, weights_file = "embedded", spec.location
            weights_sha256 = sha256_file(Path(spec.location))
        elif config.rescale_random:
            sample = _rescale_sample(spec, input_shape, config.seed, _rescale_samples(module))
            try:
                findings += rescale_random_weights(module, sample)
            except RuntimeError as exc:
                raise ModelSourceError(
                    f"the model does not accept input shape {list(input_shape)}: {first_line(exc)}"
                ) from None
    else:
        weights_file = weights
        weights_sha256 = _load_state_dict_file(module, Path(weights))
    module.eval()
    labels = _labels_for(spec, module)
    source = {
        "model": spec.name,
        "kind": spec.kind,
        "location": spec.location,
        "weights": weights,
        "weights_file": weights_file,
        "weights_sha256": weights_sha256,
        "seed": config.seed,
        "rescaled_random": weights == "random" and config.rescale_random,
    }
    return LoadedModel(module, spec, input_shape, labels, source, findings)


def _labels_for(spec: ModelSpec, module: Any) -> list[str] | None:
    if spec.kind == "torchvision":
        import torchvision

        categories = torchvision.models.get_model_weights(spec.name).DEFAULT.meta.get("categories")  # type: ignore[attr-defined]
        return list(categories) if categories else None
    if spec.name == "tiny-vgg":
        return list(TINY_VGG_LABELS)
    if spec.labels:
        return list(spec.labels)
    labels = getattr(module, "labels", None) or getattr(module, "class_names", None)
    return [str(v) for v in labels] if isinstance(labels, list | tuple) else None


def model_config_from_source(
    source: ModelSource, input_shape: tuple[int, ...] | None, *, trust: bool = False
) -> ModelConfig:
    """The ModelConfig that rebuilds the PyTorch model a manifest's ``source`` describes.

    A manifest is untrusted: a source that would run code (a factory, a TorchScript archive) or read
    a file it names (a weights file) is only rebuilt with ``trust`` (the user's ``--trust-source``);
    otherwise the error says how to name the model instead. Registered names (torchvision models,
    ``tiny-vgg``) with random or ImageNet weights are rebuilt, after checking the name is one.
    """
    if source.runs_code and not trust:
        raise InputError(
            f"the folder's model comes from {code_description(source)}: name the model yourself with --model "
            "(and --weights), or pass --trust-source if you trust where this folder came from"
        )
    if not source.runs_code:
        resolve_spec(source.model, allow_code=False)  # a registered name, not code in disguise
    weights = source.weights
    if weights not in ("random", "imagenet", "embedded"):
        weights = source.weights_file or weights
        path = Path(weights)
        if source.weights_sha256 and path.is_file() and sha256_file(path) != source.weights_sha256:
            raise InputError(f"weights file {weights} changed since export: its sha256 differs from the manifest")
    return ModelConfig(
        model=source.location if source.kind in ("factory", "torchscript") else source.model,
        weights=weights,
        seed=source.seed,
        input_shape=input_shape,
        rescale_random=source.rescaled_random,
    )


def code_description(source: ModelSource) -> str:
    """What rebuilding ``source`` would run or read, for the error that asks for ``--trust-source``."""
    return {
        "factory": f"the factory {source.location} (running it runs that code)",
        "torchscript": f"the TorchScript archive {source.location} (loading it runs its code)",
    }.get(source.kind, f"{source.model} with the weights file {source.weights_file or source.weights}")


def eager_model_builder(
    manifest: RunManifest | BundleManifest, *, model: str | None = None, trust: bool = False
) -> Any:
    """A zero-argument builder of the PyTorch model a folder came from (bench's eager baseline).

    ``model`` is the user's own ``--eager-model`` (a name or factory they chose: it may run code);
    without it the manifest's source is rebuilt under ``model_config_from_source``'s rules.
    """
    from onnx_pipeline.manifest import BundleManifest, ModelSource

    inputs = manifest.inputs
    shape = None
    if inputs and all(isinstance(d, int) for d in inputs[0].shape[1:]):
        shape = (1, *(int(d) for d in inputs[0].shape[1:]))
    if model is not None:
        weights = "random" if ":" in model else None
        config = ModelConfig(model=model, weights=weights or "random", input_shape=shape)
        return lambda: load_model(config).module
    if isinstance(manifest, BundleManifest):
        raw = manifest.run.get("source")
        if raw is None:
            raise InputError("the bundle does not say which model it came from: give --eager-model")
        source = ModelSource.from_dict(raw, manifest.root or Path("."))
    else:
        if manifest.source is None:
            raise InputError("the run folder does not say which model it came from: give --eager-model")
        source = manifest.source
    config = model_config_from_source(source, shape, trust=trust)
    return lambda: load_model(config).module
