"""Model sources: a name resolves to a ``ModelSpec``; ``load_model`` builds the module with its weights.

Names understood by ``--model``:

- a torchvision classification model (``vgg16``, ``resnet50``, ...): ImageNet preprocessing and
  class names from torchvision's weight metadata;
- ``tiny-vgg``: a small VGG-shaped model for tests and quick tries;
- ``package.module:factory`` or ``path/to/file.py:factory``: a user's model. This imports and
  runs that code, as ``python`` would;
- a TorchScript archive saved with ``torch.jit.save`` (``traced_vgg16_model.pt``).

``--weights``: ``imagenet`` (torchvision's default weights, downloaded or from the torch hub
cache), ``random`` (seeded; rescaled on sample inputs unless disabled, see
``rescale_random_weights``), or a path to a state_dict / checkpoint, loaded with
``weights_only=True`` so a pickle that carries code is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_pipeline.errors import ModelSourceError
from onnx_pipeline.files import sha256_file
from onnx_pipeline.runtime.preprocess import PreprocessSpec

if TYPE_CHECKING:
    import torch

    from onnx_pipeline.config import ModelConfig

logger = logging.getLogger(__name__)

TINY_VGG_LABELS = [f"tiny-class-{i}" for i in range(10)]


@dataclass(frozen=True)
class ModelSpec:
    """What a model name resolves to, before anything heavy is built."""

    name: str
    #: "torchvision", "builtin", "factory" or "torchscript"
    kind: str
    #: input shape with the batch axis (batch 1)
    input_shape: tuple[int, ...]
    preprocessing: PreprocessSpec | None
    task: str  # "classification" or "generic"
    build: Callable[[], Any] = field(repr=False, compare=False)
    #: where the code or archive lives (factory file, module, archive path)
    location: str = ""
    #: model-specific defaults for the config layers, e.g. {"tolerances": {"atol": 1e-3}}
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    #: class names a factory declares (``factory.labels``)
    labels: tuple[str, ...] | None = None


@dataclass
class LoadedModel:
    """A built module in eval mode, its weights applied, with what travels into the run folder."""

    module: Any  # torch.nn.Module (typed loosely so this module imports without torch)
    spec: ModelSpec
    input_shape: tuple[int, ...]
    labels: list[str] | None
    source: dict[str, Any]
    findings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- built-in models


def build_tiny_vgg(num_classes: int = 10) -> torch.nn.Module:
    """A VGG-shaped model small enough for unit tests: conv blocks, pooling, a Linear head."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
        nn.AdaptiveAvgPool2d((4, 4)),
        nn.Flatten(1),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(32, num_classes),
    )


_TINY_PREPROCESS = PreprocessSpec(resize=72, crop=(64, 64))


def _builtin_specs() -> dict[str, ModelSpec]:
    return {
        "tiny-vgg": ModelSpec(
            name="tiny-vgg",
            kind="builtin",
            input_shape=(1, 3, 64, 64),
            preprocessing=_TINY_PREPROCESS,
            task="classification",
            build=build_tiny_vgg,
            location="onnx_pipeline.sources:build_tiny_vgg",
            defaults={"model": {"weights": "random"}},
        )
    }


# --------------------------------------------------------------------------- resolution


def _torchvision_spec(name: str) -> ModelSpec | None:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        return None
    weights_enum = torchvision.models.get_model_weights(name)
    default = weights_enum.DEFAULT  # type: ignore[attr-defined]
    transforms = default.transforms()
    crop = int(transforms.crop_size[0])
    preprocessing = PreprocessSpec(
        resize=int(transforms.resize_size[0]),
        crop=(crop, crop),
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
        interpolation=str(transforms.interpolation.value),
    )

    def build() -> Any:
        kwargs: dict[str, Any] = {"weights": None}
        if name.startswith("inception_v3") or name.startswith("googlenet"):
            kwargs["init_weights"] = True  # silence torchvision's FutureWarning, keep its init
        return torchvision.models.get_model(name, **kwargs)

    return ModelSpec(
        name=name,
        kind="torchvision",
        input_shape=(1, 3, crop, crop),
        preprocessing=preprocessing,
        task="classification",
        build=build,
        location=f"torchvision.models.{name}",
        defaults={"model": {"weights": "imagenet"}},
    )


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _factory_spec(text: str) -> ModelSpec:
    target, _, attr = text.rpartition(":")
    if not target or not attr.isidentifier():
        raise ModelSourceError(
            f"'{text}' is not a factory reference: write package.module:function or file.py:function"
        )

    def load_callable() -> Callable[[], Any]:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ModelSourceError(f"factory file {path} does not exist")
            mod_name = f"_onnx_pipeline_user_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ModelSourceError(f"cannot import {path} as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise ModelSourceError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
        else:
            try:
                module = importlib.import_module(target)
            except ImportError as exc:
                raise ModelSourceError(f"cannot import module '{target}': {exc}") from None
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise ModelSourceError(f"'{target}' has no callable named '{attr}'")
        return factory  # type: ignore[no-any-return]

    factory = load_callable()
    shape = getattr(factory, "input_shape", None)
    declared_labels = getattr(factory, "labels", None)
    prep = getattr(factory, "preprocessing", None)
    preprocessing = PreprocessSpec.from_dict(prep) if isinstance(prep, dict) else None

    def build() -> Any:
        try:
            return factory()
        except Exception as exc:
            raise ModelSourceError(f"the factory {text} raised {type(exc).__name__}: {exc}") from exc

    return ModelSpec(
        name=text,
        kind="factory",
        input_shape=tuple(shape) if shape else (1, 3, 224, 224),
        preprocessing=preprocessing,
        task=str(getattr(factory, "task", "classification" if preprocessing else "generic")),
        build=build,
        location=text,
        defaults={"model": {"weights": "random"}},
        labels=tuple(str(v) for v in declared_labels) if isinstance(declared_labels, list | tuple) else None,
    )


def _torchscript_spec(path: Path) -> ModelSpec:
    def build() -> Any:
        import torch

        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError subclasses with C++ traces
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelSourceError(f"{path} is not a loadable TorchScript archive: {first}") from None

    return ModelSpec(
        name=path.name,
        kind="torchscript",
        input_shape=(1, 3, 224, 224),
        preprocessing=PreprocessSpec(),
        task="classification",
        build=build,
        location=str(path),
        defaults={"model": {"weights": "embedded"}},
    )


def model_defaults(name: str) -> dict[str, dict[str, Any]]:
    """The config layer a model contributes, found without importing torch or the user's code."""
    builtin = _builtin_specs()
    if name in builtin:
        return builtin[name].defaults
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".zip") or path.is_file():
        return {"model": {"weights": "embedded"}}
    if ":" in name:
        return {"model": {"weights": "random"}}
    return {"model": {"weights": "imagenet"}}


def resolve_spec(name: str) -> ModelSpec:
    """Resolve a ``--model`` value to a spec (cheap: nothing is built)."""
    builtin = _builtin_specs()
    if name in builtin:
        return builtin[name]
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".zip") or path.is_file():
        if not path.is_file():
            raise ModelSourceError(f"model file {path} does not exist: give a TorchScript archive or a model name")
        if not _is_torchscript_archive(path):
            raise ModelSourceError(
                f"{path} is not a TorchScript archive: pass a state_dict with --weights and the architecture "
                "with --model (a torchvision name or file.py:factory)"
            )
        return _torchscript_spec(path)
    if ":" in name:
        return _factory_spec(name)
    spec = _torchvision_spec(name)
    if spec is None:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        close = [k for k in known if k.startswith(name[:3])][:6]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelSourceError(
            f"unknown model '{name}'{hint}: use a torchvision classification model name, tiny-vgg, "
            "package.module:factory, file.py:factory, or a TorchScript archive"
        )
    return spec


# --------------------------------------------------------------------------- weights


def _load_imagenet(module: Any, spec: ModelSpec) -> tuple[str | None, str]:
    import torch.hub
    import torchvision

    weights = torchvision.models.get_model_weights(spec.name).DEFAULT  # type: ignore[attr-defined]
    file_name = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    try:
        # torch.hub writes "Downloading: URL" to stdout even with progress=False, which would
        # break --json: keep it (and any stderr noise) out of the CLI's streams.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # urllib/socket errors: offline, proxy, ...
        raise ModelSourceError(
            f"cannot get torchvision's ImageNet weights for {spec.name} ({type(exc).__name__}): offline? "
            f"put {file_name} in {cached.parent}, or use --weights PATH (a state_dict) or --weights random"
        ) from None
    module.load_state_dict(state, strict=True)
    return (sha256_file(cached) if cached.is_file() else None), str(cached)


def _load_state_dict_file(module: Any, path: Path) -> str:
    import pickle

    import torch

    if not path.is_file():
        raise ModelSourceError(f"weights file {path} does not exist: give a state_dict saved with torch.save")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "Unsupported global" in line or "GLOBAL" in line), "")
        raise ModelSourceError(
            f"refused to load {path}: it is a pickle that carries code, not plain tensors {detail.strip()}. "
            "Save weights with torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"{path} is not a readable PyTorch weights file: {first}") from None
    state = loaded
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in loaded and isinstance(loaded[key], dict):
                state = loaded[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{path} holds no state_dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {_names(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_names(result.unexpected_keys)}")
    if problems:
        raise ModelSourceError(f"weights in {path} do not fit the model: {'; '.join(problems)}")
    return sha256_file(path)


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def rescale_random_weights(module: Any, sample: Any) -> list[str]:
    """Make randomly initialised weights produce well-scaled activations, in one forward pass.

    Random initialisations are not made for inference: torchvision's give outputs below 1e-6
    for MobileNet/EfficientNet (BatchNorm with unit running statistics after layers that shrink
    the signal), exactly 0 for ViT (zero-initialised head) and ~1e11 for Inception v3. A parity
    check on such outputs is vacuous or overflows. So, in the spirit of LSUV (Mishkin & Matas,
    2016): weights that are constant (zero heads) are re-drawn; BatchNorm running statistics
    are recomputed from the sample batch; and each Conv/Linear is rescaled so that its output
    has unit standard deviation on the sample, layer by layer in a single pass.
    """
    import torch
    from torch import nn

    findings = []
    redrawn = 0
    generator = torch.Generator().manual_seed(0)
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d | nn.Linear | nn.Conv1d | nn.Conv3d):
            weight = sub.weight
            if weight.numel() > 1 and float(weight.detach().std()) == 0.0:
                fan_in = weight[0].numel()
                with torch.no_grad():
                    weight.copy_(torch.randn(weight.shape, generator=generator) / fan_in**0.5)
                redrawn += 1
    bn_layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bn_layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives exactly its statistics

    def rescale(layer: Any, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            return output
        std = float(output.detach().float().std())
        if std > 0 and std == std and std != float("inf"):
            with torch.no_grad():
                layer.weight.div_(std)
                if getattr(layer, "bias", None) is not None:
                    layer.bias.div_(std)
            return output / std
        return output

    hooks = [
        sub.register_forward_hook(rescale)
        for sub in module.modules()
        if isinstance(sub, nn.Conv2d | nn.Linear | nn.Conv1d | nn.Conv3d)
    ]
    module.eval()
    for bn in bn_layers:
        bn.train()
    try:
        with torch.no_grad():
            module(sample)
    finally:
        for hook in hooks:
            hook.remove()
        module.eval()
    if redrawn:
        findings.append(f"random weights: re-drew {redrawn} constant (zero-initialised) weight tensors")
    findings.append(
        f"random weights: rescaled {len(hooks)} Conv/Linear layers to unit output std"
        + (f" and recomputed {len(bn_layers)} BatchNorm statistics" if bn_layers else "")
        + f" on {int(sample.shape[0])} seeded samples, so that parity is measured on well-scaled outputs"
    )
    return findings


def _rescale_sample(spec: ModelSpec, input_shape: tuple[int, ...], seed: int, samples: int) -> Any:
    """Seeded samples like the ones verify uses: normal, and uniform over the real input range.

    Calibrating BatchNorm on normal samples alone left EfficientNet ill-conditioned on
    in-range inputs (outputs ~1e3, float error 0.6% of the range); both kinds keep it at ~1.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    shape = tuple(input_shape[1:])
    prep = spec.preprocessing
    half = samples // 2
    normal = torch.randn((half, *shape), generator=generator)
    if prep is None or len(shape) != 3 or shape[0] != prep.channels:
        return torch.cat([normal, torch.randn((samples - half, *shape), generator=generator)])
    low, high = (torch.from_numpy(v).view(-1, 1, 1) for v in prep.input_range())
    uniform = low + torch.rand((samples - half, *shape), generator=generator) * (high - low)
    return torch.cat([normal, uniform])


def _rescale_samples(module: Any) -> int:
    """BatchNorm statistics need a batch (8); a model without BatchNorm only needs a scale (2)."""
    from torch import nn

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    return 8 if has_bn else 2


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
                first = str(exc).strip().splitlines()[0]
                raise ModelSourceError(f"the model does not accept input shape {list(input_shape)}: {first}") from None
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
