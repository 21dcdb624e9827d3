"""How an image becomes a model input, as data: the ``preprocessing`` of run folders and bundles.

Kept apart from the image code (``runtime.preprocess``) so that manifests can hold it without
importing Pillow; numpy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onnx_pipeline.errors import InputError

#: PIL.Image.Resampling values of the interpolations torchvision's presets use
RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}
#: the largest resize/crop side accepted (a manifest asking for more is refused: memory)
MAX_SIDE = 8192


@dataclass(frozen=True)
class PreprocessSpec:
    """What turns an image file into the model's input tensor (one sample, NCHW without N).

    Mirrors torchvision's ``ImageClassification`` preset: resize the shorter side to
    ``resize`` (bilinear, Pillow's antialiasing), center-crop ``crop``, scale to [0, 1],
    normalise with ``mean``/``std``.
    """

    #: the shorter side is resized to this (the longer one keeps the aspect ratio, truncated)
    resize: int = 256
    #: the center crop, (height, width)
    crop: tuple[int, int] = (224, 224)
    #: per-channel mean subtracted after scaling
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    #: per-channel standard deviation divided by
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    #: "RGB" or "L" (greyscale)
    color: str = "RGB"
    #: "NCHW" or "NHWC"
    layout: str = "NCHW"
    #: "bilinear", "bicubic" or "nearest" (Pillow's, with antialiasing, as torchvision)
    interpolation: str = "bilinear"
    #: pixel values are multiplied by this (1/255: divided by 255, bit-exact with ToTensor)
    scale: float = 1.0 / 255.0
    #: the input dtype (float32)
    dtype: str = "float32"
    #: free-form notes a factory may add
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not _is_int(self.resize) or not 1 <= self.resize <= MAX_SIDE:
            problems.append(f"resize must be an integer in 1..{MAX_SIDE}, got {self.resize!r}")
        if len(self.crop) != 2 or not all(_is_int(c) and 1 <= c <= MAX_SIDE for c in self.crop):
            problems.append(f"crop must be two integers in 1..{MAX_SIDE}, got {list(self.crop)!r}")
        if self.color not in ("RGB", "L"):
            problems.append(f"color must be RGB or L, got {self.color!r}")
        channels = 1 if self.color == "L" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != channels or not all(_is_number(v) for v in values):
                problems.append(
                    f"{name} must be {channels} finite numbers for color {self.color}, got {list(values)!r}"
                )
        if all(_is_number(v) for v in self.std) and any(v == 0 for v in self.std):
            problems.append("std must not hold a zero")
        if self.layout not in ("NCHW", "NHWC"):
            problems.append(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.interpolation not in RESAMPLE:
            problems.append(f"interpolation must be one of {', '.join(RESAMPLE)}, got {self.interpolation!r}")
        if not _is_number(self.scale) or self.scale <= 0:
            problems.append(f"scale must be a positive number, got {self.scale!r}")
        if self.dtype != "float32":
            problems.append(f"dtype must be float32, got {self.dtype!r}")
        if not isinstance(self.extra, dict):
            problems.append("extra must be an object")
        if problems:
            raise InputError("invalid preprocessing: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored under ``preprocessing`` in a manifest."""
        data = asdict(self)
        data["crop"] = list(self.crop)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> PreprocessSpec:
        """Read the manifest (or a factory's ``preprocessing``) form back; unknown keys are refused by name."""
        if not isinstance(data, dict):
            raise InputError(f"preprocessing must be an object (a dict), not {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown preprocessing key(s) {sorted(unknown)}; allowed: {', '.join(sorted(known))}")
        values = dict(data)
        crop = values.get("crop")
        if _is_int(crop):
            values["crop"] = (crop, crop)
        elif isinstance(crop, list | tuple):
            values["crop"] = tuple(crop)
        elif crop is not None:
            raise InputError(f"invalid preprocessing: crop must be an integer or two integers, got {crop!r}")
        for key in ("mean", "std"):
            if key in values:
                if not isinstance(values[key], list | tuple):
                    raise InputError(f"invalid preprocessing: {key} must be a list of numbers, got {values[key]!r}")
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def channels(self) -> int:
        """Number of colour channels of the model input."""
        return 1 if self.color == "L" else 3

    def input_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) of a preprocessed pixel: where real inputs live."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return (0.0 - mean) / std, (1.0 - mean) / std


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
