"""Validation of a manifest's raw JSON object (typed getters that name the field in every error), and the
tensor description both manifests hold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_pipeline.errors import InputError, IntegrityError
from onnx_pipeline.imagespec import PreprocessSpec


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (a dynamic dim is its name) and numpy dtype name."""

    #: the graph's tensor name
    name: str
    #: one entry per axis: an int, or the name of a dynamic axis ("batch")
    shape: tuple[int | str, ...]
    #: numpy dtype name
    dtype: str = "float32"


class Fields:
    """A manifest's raw JSON object being validated: typed getters that name the field in every error."""

    def __init__(self, data: Mapping[str, Any], where: Path) -> None:
        self.data = data
        self.where = where

    def fail(self, key: str, wanted: str) -> InputError:
        return InputError(f"{self.where}: '{key}' must be {wanted}, got {self.data.get(key)!r:.80}: rebuild the folder")

    def get_str(self, key: str, default: Any = ...) -> Any:
        value = self.data.get(key, default)
        if value is ... or not (isinstance(value, str) or (value is None and default is None)):
            raise self.fail(key, "a string")
        return value

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def get_int(self, key: str, default: Any = ...) -> int:
        value = self.data.get(key, default)
        if value is ... or isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer")
        return value

    def get_obj(self, key: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "a JSON object")
        return value

    def get_files(self) -> dict[str, str]:
        value = self.data.get("files")
        if not isinstance(value, dict) or not value:
            raise IntegrityError(f"{self.where} lists no files with their sha256 ('files'): rebuild the folder")
        for rel, digest in value.items():
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise InputError(f"{self.where}: files[{rel!r}] is not a sha256 digest: rebuild the folder")
        return dict(value)

    def get_tensors(self, key: str) -> tuple[TensorSpec, ...]:
        value = self.data.get(key)
        if not isinstance(value, list) or not value:
            raise self.fail(key, "a non-empty list of {name, shape, dtype}")
        out = []
        for item in value:
            ok = isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("shape"), list)
            ok = ok and all(
                isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool)) for d in item["shape"]
            )
            if not ok:
                raise self.fail(key, "a list of {name, shape, dtype}")
            out.append(TensorSpec(item["name"], tuple(item["shape"]), str(item.get("dtype", "float32"))))
        return tuple(out)

    def get_labels(self) -> tuple[str, ...] | None:
        value = self.data.get("labels")
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise self.fail("labels", "a non-empty list of class names")
        out = []
        for item in value:
            # the seed's imagenet_class_index style ["n01440764", "tench"]: keep the readable name
            if isinstance(item, list) and item and all(isinstance(v, str) for v in item):
                item = item[-1]
            if not isinstance(item, str):
                raise self.fail("labels", "a list of class names (strings)")
            out.append(item)
        return tuple(out)

    def get_preprocessing(self) -> PreprocessSpec | None:
        value = self.data.get("preprocessing")
        if value is None:
            return None
        try:
            return PreprocessSpec.from_dict(value)
        except InputError as exc:
            raise InputError(f"{self.where}: preprocessing: {exc.message}") from None

    def get_floats(self, key: str) -> dict[str, float]:
        value = self.get_obj(key) or {}
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value.values()):
            raise self.fail(key, "an object of numbers")
        return {str(k): float(v) for k, v in value.items()}
