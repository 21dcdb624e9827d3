"""The inputs of a bundle: calibration samples and held-out samples, from images or made up.

Calibration images are split: part of them is held out for the fidelity check (never calibrated on).
Without images, smooth synthetic images stand in, and every place that records the data says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.config import BundleConfig
from onnx_pipeline.errors import InputError
from onnx_pipeline.imagespec import PreprocessSpec
from onnx_pipeline.runtime.preprocess import list_images, load_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleData:
    """Calibration and held-out inputs of one bundle (preprocessed, batch first) and how they were made."""

    calibration: np.ndarray | None
    calibration_info: Mapping[str, Any] | None
    heldout: np.ndarray
    heldout_info: Mapping[str, Any]

    @property
    def description(self) -> str:
        """How the held-out inputs were made, as fidelity results record it."""
        return "synthetic" if self.heldout_info.get("synthetic") else f"{len(self.heldout)} held-out images"


def synthetic_images(count: int, shape: tuple[int, ...], spec: PreprocessSpec | None, seed: int) -> np.ndarray:
    """Smooth random images (low-frequency colour fields plus a little noise), preprocessed like photos.

    Closer to natural-image statistics than white noise, but still no substitute for real images.
    """
    rng = np.random.default_rng(seed)
    if spec is None or len(shape) != 3:
        return rng.standard_normal((count, *shape)).astype(np.float32)
    channels, height, width = shape
    coarse = rng.uniform(0.0, 1.0, size=(count, channels, 4, 4)).astype(np.float32)
    rows = np.linspace(0, 3, height)
    cols = np.linspace(0, 3, width)
    r0, c0 = np.floor(rows).astype(int).clip(0, 2), np.floor(cols).astype(int).clip(0, 2)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = coarse[:, :, r0][:, :, :, c0] * (1 - fc) + coarse[:, :, r0][:, :, :, c0 + 1] * fc
    bottom = coarse[:, :, r0 + 1][:, :, :, c0] * (1 - fc) + coarse[:, :, r0 + 1][:, :, :, c0 + 1] * fc
    pixels = top * (1 - fr) + bottom * fr + rng.normal(0.0, 0.05, size=(count, channels, height, width))
    pixels = pixels.clip(0.0, 1.0).astype(np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)


def prepare_data(
    config: BundleConfig,
    spec: PreprocessSpec | None,
    sample_shape: tuple[int, ...],
    needs_calibration: bool,
    max_calibration: int,
) -> BundleData:
    rng = np.random.default_rng(config.seed)
    calibration: np.ndarray | None = None
    calibration_info: dict[str, Any] | None = None
    heldout_paths: list[Path] = []
    if config.heldout_images is not None:
        heldout_paths = list_images(config.heldout_images)[: config.max_heldout]
    if config.calibration_images is not None:
        if spec is None:
            raise InputError("the run folder's model has no image preprocessing: calibration images cannot be used")
        paths = list_images(config.calibration_images)
        if needs_calibration and not heldout_paths:
            if len(paths) < 2:
                raise InputError(
                    f"{config.calibration_images} holds {len(paths)} image: need at least 2 (one is held out "
                    "for the fidelity check), or pass held-out images separately"
                )
            order = list(rng.permutation(len(paths)))
            held = max(1, min(config.max_heldout, round(len(paths) * config.heldout_fraction)))
            heldout_paths = [paths[i] for i in sorted(order[:held])]
            paths = [paths[i] for i in sorted(order[held:])]
        elif not needs_calibration and not heldout_paths:
            heldout_paths, paths = paths[: config.max_heldout], []
        if needs_calibration:
            paths = paths[:max_calibration]
            calibration = load_batch(paths, spec)
            calibration_info = {
                "synthetic": False,
                "samples": len(paths),
                "images": [p.name for p in paths],
                "folder": str(config.calibration_images),
            }
    if needs_calibration and calibration is None:
        calibration = synthetic_images(config.synthetic_samples, sample_shape, spec, config.seed)
        calibration_info = {
            "synthetic": True,
            "samples": len(calibration),
            "warning": "SYNTHETIC calibration data (smooth random images): int8 ranges may not fit real inputs; "
            "rebuild with --calibration-images DIR",
        }
        log.warning("calibrating int8 on synthetic data: pass calibration images for a bundle fit for use")
    if heldout_paths:
        assert spec is not None
        heldout = load_batch(heldout_paths, spec)
        heldout_info = {"synthetic": False, "samples": len(heldout_paths), "images": [p.name for p in heldout_paths]}
    else:
        count = max(2, min(config.max_heldout, config.synthetic_samples // 2))
        heldout = synthetic_images(count, sample_shape, spec, config.seed + 1)
        heldout_info = {"synthetic": True, "samples": count, "warning": "fidelity measured on SYNTHETIC inputs"}
    if heldout.shape[1:] != sample_shape:
        raise InputError(f"preprocessed images have shape {heldout.shape[1:]}, the model takes {sample_shape}")
    return BundleData(calibration, calibration_info, heldout, heldout_info)
