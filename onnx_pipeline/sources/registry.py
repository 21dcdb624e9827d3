"""The model registry: a ``--model`` name resolves to a ``ModelSpec`` (cheap: nothing is built).

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

import importlib
import importlib.util
import logging
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_pipeline.errors import InputError, ModelSourceError, first_line
from onnx_pipeline.imagespec import PreprocessSpec

if TYPE_CHECKING:
    import torch


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
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
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
            except (Exception, SystemExit) as exc:  # a user's module may call sys.exit()
                raise ModelSourceError(f"importing {path} failed: {_what(exc)}") from None
        else:
            try:
                module = importlib.import_module(target)
            except ImportError as exc:
                raise ModelSourceError(f"cannot import module '{target}': {first_line(exc)}") from None
            except (Exception, SystemExit) as exc:
                raise ModelSourceError(f"importing module '{target}' failed: {_what(exc)}") from None
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise ModelSourceError(f"'{target}' has no callable named '{attr}'")
        return factory  # type: ignore[no-any-return]

    factory = load_callable()
    shape = _declared_shape(text, getattr(factory, "input_shape", None))
    declared_labels = getattr(factory, "labels", None)
    prep = getattr(factory, "preprocessing", None)
    try:
        preprocessing = PreprocessSpec.from_dict(prep) if prep is not None else None
    except InputError as exc:
        raise ModelSourceError(f"the factory {text} declares a bad preprocessing: {exc.message}") from None

    def build() -> Any:
        try:
            return factory()
        except (Exception, SystemExit) as exc:
            raise ModelSourceError(f"the factory {text} failed: {_what(exc)}") from None

    return ModelSpec(
        name=text,
        kind="factory",
        input_shape=shape,
        preprocessing=preprocessing,
        task=str(getattr(factory, "task", "classification" if preprocessing else "generic")),
        build=build,
        location=text,
        defaults={"model": {"weights": "random"}},
        labels=tuple(str(v) for v in declared_labels) if isinstance(declared_labels, list | tuple) else None,
    )


def _what(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {first_line(exc)}"


def _declared_shape(text: str, shape: Any) -> tuple[int, ...]:
    """A factory's ``input_shape`` (batch axis included), checked; (1, 3, 224, 224) when it declares none."""
    if shape is None:
        return (1, 3, 224, 224)
    ok = isinstance(shape, list | tuple) and 2 <= len(shape) <= 6
    ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 16 for d in shape)
    if not ok:
        raise ModelSourceError(
            f"the factory {text} declares input_shape {shape!r}: give a tuple of positive integers with the batch "
            "axis, e.g. (1, 3, 224, 224)"
        )
    return tuple(shape)


def check_archive(path: Path) -> None:
    """A zip archive (TorchScript, or a torch.save file) whose every member passes its CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ModelSourceError(f"{path} is a damaged archive ({first_line(exc)}): copy or save it again") from None
    if bad is not None:
        raise ModelSourceError(f"{path} is damaged: its member {bad} fails its CRC check; copy or save it again")


def _torchscript_spec(path: Path) -> ModelSpec:
    def build() -> Any:
        import torch

        check_archive(path)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError subclasses with C++ traces
            raise ModelSourceError(f"{path} is not a loadable TorchScript archive: {first_line(exc)}") from None

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


def resolve_spec(name: str, *, allow_code: bool = True) -> ModelSpec:
    """Resolve a ``--model`` value to a spec (cheap: nothing is built).

    ``allow_code=False`` accepts only names of the registry (built-in and torchvision models): a
    factory or an archive is code, and a name read from a manifest must not run any.
    """
    builtin = _builtin_specs()
    if name in builtin:
        return builtin[name]
    if not allow_code and (":" in name or "/" in name or "\\" in name or Path(name).suffix):
        raise ModelSourceError(f"'{name}' is not a registered model name: refused (it would run code)")
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".zip") or path.is_file():
        if path.is_dir():
            raise ModelSourceError(f"{path} is a folder: give a TorchScript archive file or a model name")
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
