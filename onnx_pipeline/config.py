"""Frozen, typed configuration for every step, and the one place where precedence is resolved.

Precedence, highest first: CLI flag > config file (``--config FILE.toml``) > hardware target >
model default > built-in default. ``resolve_pipeline_config`` records where each value came from
in ``PipelineConfig.provenance`` so the report can show it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from onnx_pipeline.errors import InputError

if TYPE_CHECKING:
    from onnx_pipeline.targets import HardwareTarget

Exporter = Literal["dynamo", "torchscript"]
SimplifierBackend = Literal["onnxsim", "onnxslim"]

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ModelConfig:
    """Which PyTorch model to load, and how to get its weights."""

    model: str = "vgg16"
    #: "imagenet" (torchvision's default weights), "random" (seeded), or a path to a state_dict
    weights: str = "random"
    seed: int = 0
    #: overrides the model's input shape, batch axis included (e.g. (1, 3, 224, 224))
    input_shape: tuple[int, ...] | None = None
    #: with random weights, rescale layers on sample inputs so outputs are well scaled (see sources)
    rescale_random: bool = True


@dataclass(frozen=True)
class ExportConfig:
    """How the PyTorch model becomes ONNX."""

    exporter: Exporter = "dynamo"
    #: when the chosen exporter fails, try the other one and record it
    fallback: bool = True
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    #: None: external data only when the model would pass protobuf's 2 GB limit
    external_data: bool | None = None


@dataclass(frozen=True)
class SimplifyConfig:
    """Graph simplification after export."""

    enabled: bool = True
    backend: SimplifierBackend = "onnxsim"


#: the scale-aware rule's defaults: the fallback when no float64 reference can be computed
SCALE_AWARE_ATOL = 1e-4
SCALE_AWARE_RTOL = 1e-3
#: the noise-floor rule's default factor, chosen from measurements (benchmarks/noise_floor.py, README)
NOISE_FACTOR = 10.0


@dataclass(frozen=True)
class Tolerances:
    """Parity criteria.

    By default the *measured noise floor* decides (see ``compare.floor``): the ONNX model's error
    against a float64 PyTorch reference must stay within ``noise_factor`` times PyTorch's own float32
    error against it, per output, for the max and the mean. Where no float64 reference can be computed,
    the scale-aware rule decides with ``SCALE_AWARE_ATOL``/``SCALE_AWARE_RTOL``; giving ``atol`` or
    ``rtol`` makes that rule (with the other one at its default) the criterion: fixed tolerances.

    Scale-aware: an element passes when ``|onnx - torch| <= atol * scale + rtol * |torch|``, where
    ``scale`` is the output's dynamic range (max ``|torch|`` over every verified sample), so a
    1e8-scale output is not failed on absolute error alone, and a 1e-7-scale output cannot pass on
    it alone. Under every rule an output must also reach ``min_cosine`` (cosine similarity per
    sample, the worst one counts) and, for classifiers, agree on the top-1 class wherever the
    reference's top-1 margin exceeds the allowed error.
    """

    atol: float | None = None
    rtol: float | None = None
    noise_factor: float = NOISE_FACTOR
    min_cosine: float = 0.9999
    #: reference outputs whose dynamic range is below this are degenerate (near zero)
    degenerate_below: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("atol", "rtol", "degenerate_below"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InputError(f"tolerance {name} must be >= 0, got {value}")
        if not self.noise_factor >= 1.0:
            raise InputError(f"noise_factor must be at least 1 (PyTorch's own error), got {self.noise_factor}")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise InputError(f"min_cosine must lie in [-1, 1], got {self.min_cosine}")

    @property
    def fixed(self) -> bool:
        """The user gave ``atol`` or ``rtol``: fixed tolerances decide, not the noise floor."""
        return self.atol is not None or self.rtol is not None

    def scale_aware(self) -> tuple[float, float]:
        """(atol, rtol) of the scale-aware rule: the given ones, else the defaults."""
        atol = SCALE_AWARE_ATOL if self.atol is None else self.atol
        rtol = SCALE_AWARE_RTOL if self.rtol is None else self.rtol
        return atol, rtol


@dataclass(frozen=True)
class VerifyConfig:
    """What verify compares, on which inputs."""

    tolerances: Tolerances = field(default_factory=Tolerances)
    #: the larger batch size (the other is 1), so that a baked batch size cannot pass
    batch_size: int = 3
    #: folder of photographs put through the model's own preprocessing
    images: Path | None = None
    #: at most this many images from ``images``
    max_images: int = 16
    seed: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    #: localise the first divergence even when parity passes (it always runs when parity fails)
    localize: bool = False
    #: localise automatically when parity fails (the PyTorch model is rebuilt once more)
    localize_on_failure: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise InputError(f"--batch-size must be at least 2 (verify also runs batch 1), got {self.batch_size}")
        if self.max_images < 1:
            raise InputError(f"--max-images must be at least 1, got {self.max_images}")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one ``export`` run needs, resolved."""

    model: ModelConfig = field(default_factory=ModelConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    simplify: SimplifyConfig = field(default_factory=SimplifyConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    output: Path = Path("runs/vgg16")
    force: bool = False
    #: verification runs as part of export unless disabled
    run_verify: bool = True
    #: hardware targets to bundle for after export (names or TOML paths)
    targets: tuple[str, ...] = ()
    calibration_images: Path | None = None
    #: a bundle model that misses its thresholds keeps its most sensitive layers in float (``--no-fallback``)
    fallback: bool = True
    #: run the PyTorch side (load, references, export) in a process of its own, see
    #: pipeline.torch_stage. The CLI does; in a script it needs the `if __name__ == "__main__":` guard.
    isolate_torch: bool = False
    #: "section.key" -> where the value came from ("cli", "config-file", "target", "model", "default")
    provenance: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.export.opset < 13 or self.export.opset > 23:
            raise InputError(f"--opset {self.export.opset} is outside the supported range 13..23")


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "export": ExportConfig,
    "simplify": SimplifyConfig,
    "verify": VerifyConfig,
    "tolerances": Tolerances,
}
_TOP_LEVEL = {"output", "force", "run_verify", "targets", "calibration_images", "isolate_torch", "fallback"}


def _coerce(section: str, key: str, value: Any) -> Any:
    """Turn TOML/CLI values into the dataclass field types (tuples, paths)."""
    if key in ("input_shape", "providers", "targets") and value is not None:
        if isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
        return tuple(int(v) for v in value) if key == "input_shape" else tuple(str(v) for v in value)
    if key in ("images", "output", "calibration_images") and value is not None:
        return Path(value)
    return value


def load_config_file(path: Path) -> dict[str, dict[str, Any]]:
    """Read a TOML config file into {section: {key: value}}, refusing unknown sections and keys."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, dict[str, Any]] = {"": {}}
    for key, value in raw.items():
        if key in _TOP_LEVEL:
            out[""][key] = value
        elif key in _SECTIONS and isinstance(value, dict):
            allowed = {f.name for f in fields(_SECTIONS[key])}
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise InputError(f"config file {path}: unknown key(s) {unknown} in [{key}]; allowed: {sorted(allowed)}")
            out[key] = dict(value)
        else:
            raise InputError(f"config file {path}: unknown key or section '{key}'")
    return out


def config_file_model(path: Path | None) -> str | None:
    """The ``[model] model`` a config file names, if any (to find that model's default layer)."""
    if path is None:
        return None
    value = load_config_file(path).get("model", {}).get("model")
    return str(value) if value is not None else None


def targets_layer(targets: Sequence[HardwareTarget]) -> dict[str, dict[str, Any]]:
    """The hardware-target layer of the config: what the targets agree on (batch mode, opset).

    Give only the targets whose builders take the exported model as it is (a builder that rewrites
    the model to its own opset and batch, as Vitis AI's does, constrains nothing); a key the targets
    disagree on is left to the model's default.
    """
    layer: dict[str, dict[str, Any]] = {}
    conflicts: set[tuple[str, str]] = set()
    for target in targets:
        for section, values in target.pipeline_defaults().items():
            for key, value in values.items():
                if key in layer.get(section, {}) and layer[section][key] != value:
                    conflicts.add((section, key))
                layer.setdefault(section, {})[key] = value
    for section, key in conflicts:
        del layer[section][key]
    return layer


def resolve_pipeline_config(
    *,
    cli: dict[str, dict[str, Any]],
    config_file: Path | None = None,
    target: dict[str, dict[str, Any]] | None = None,
    model_defaults: dict[str, dict[str, Any]] | None = None,
) -> PipelineConfig:
    """Merge the layers (CLI > config file > target > model default > built-in) into one config.

    Each layer is {section: {key: value}} with section "" for top-level keys; a value of None
    means "not set in this layer".
    """
    layers: list[tuple[str, dict[str, dict[str, Any]]]] = [
        ("model", model_defaults or {}),
        ("target", target or {}),
        ("config-file", load_config_file(config_file) if config_file else {}),
        ("cli", cli),
    ]
    merged: dict[str, dict[str, Any]] = {name: {} for name in ("", *_SECTIONS)}
    provenance: dict[str, str] = {}
    for origin, layer in layers:
        for section, values in layer.items():
            for key, value in values.items():
                if value is None:
                    continue
                merged.setdefault(section, {})[key] = _coerce(section, key, value)
                provenance[f"{section}.{key}" if section else key] = origin
    try:
        tolerances = Tolerances(**merged["tolerances"])
        verify = VerifyConfig(**{**merged["verify"], "tolerances": tolerances})
        config = PipelineConfig(
            model=ModelConfig(**merged["model"]),
            export=ExportConfig(**merged["export"]),
            simplify=SimplifyConfig(**merged["simplify"]),
            verify=verify,
            provenance=provenance,
            **merged[""],
        )
    except TypeError as exc:  # an unknown key that slipped past the CLI layer
        raise InputError(f"invalid configuration: {exc}") from None
    if config.export.exporter not in ("dynamo", "torchscript"):
        raise InputError(f"--exporter must be 'dynamo' or 'torchscript', got '{config.export.exporter}'")
    if config.simplify.backend not in ("onnxsim", "onnxslim"):
        raise InputError(f"--simplifier must be 'onnxsim' or 'onnxslim', got '{config.simplify.backend}'")
    return config


@dataclass(frozen=True)
class BundleConfig:
    """What ``build_bundle`` needs besides the run folder and the target."""

    #: folder of images to calibrate int8 on; part of it is held out for the fidelity check
    calibration_images: Path | None = None
    #: folder of images used only for the fidelity check (then no calibration image is held out)
    heldout_images: Path | None = None
    #: share of ``calibration_images`` held out when ``heldout_images`` is not given
    heldout_fraction: float = 0.25
    #: most held-out samples checked (and stored in the bundle)
    max_heldout: int = 16
    #: synthetic samples used when there are no images (calibration; half as many held out)
    synthetic_samples: int = 16
    seed: int = 0
    force: bool = False
    #: keep the most sensitive layers of a model that misses its thresholds in float (the profile's budget)
    fallback: bool = True
    #: rebuild the run's PyTorch model (torchscript, torchserve) even when that runs code the folder names
    trust_source: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise InputError(f"heldout_fraction must be between 0 and 1, got {self.heldout_fraction}")
        if self.max_heldout < 1 or self.synthetic_samples < 2:
            raise InputError("max_heldout must be >= 1 and synthetic_samples >= 2")
