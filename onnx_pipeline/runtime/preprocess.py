"""Image preprocessing with Pillow and numpy only, matching torchvision's classification transforms.

This module must never import torch: it runs on the device side. ``PreprocessSpec`` is the
serialised form stored in run folders and bundles (``manifest.json`` → ``preprocessing``).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.errors import InputError
from onnx_pipeline.imagespec import RESAMPLE as _RESAMPLE
from onnx_pipeline.imagespec import PreprocessSpec

# Refuse images above this many pixels (Pillow's own bomb limit is ~89 MP; we raise, not warn).
MAX_IMAGE_PIXELS = 64_000_000
# Refuse a resize whose result would be larger than this (a 1x20000 strip resized to a 256 short side
# would be 256x5120000): what the resize allocates is bounded, not only what the decoder does.
MAX_RESIZED_PIXELS = 16_000_000
#: 16-bit (and 32-bit integer) greyscale modes: converted to 8 bits by their real range, not clipped
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image(source: Path | str | bytes | bytearray, *, color: str = "RGB") -> Any:
    """Open an image file (or bytes) with Pillow, refusing non-images, empty files and bombs.

    The pixel count is checked from the header, before any pixel is decoded, against
    ``MAX_IMAGE_PIXELS`` (read at call time, so tests and callers may lower it). EXIF
    orientation is not applied, as torchvision does not apply it either.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        name = "<bytes>"
        if not source:
            raise InputError("the image data is empty: give a non-empty image file")
        stream: Any = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise InputError(f"{path} is not a file: give the path of an image (JPEG, PNG, ...)")
        if path.stat().st_size == 0:
            raise InputError(f"{path} is empty: give a non-empty image file")
        stream = path
    limit = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice that; we refuse instead.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
                if width * height > limit:
                    raise InputError(
                        f"{name} is {width}x{height} pixels, over the {limit:,}-pixel limit "
                        "(a decompression bomb?): downscale it first"
                    )
                if image.mode == "P" and "transparency" in image.info:
                    # Pillow warns when converting such palettes straight to RGB.
                    converted = image.convert("RGBA").convert(color)
                elif image.mode in _WIDE_MODES:
                    converted = _wide_to_8bit(image, name).convert(color)
                elif image.mode == "F":
                    raise InputError(f"{name} holds floating-point pixels: save it as an 8- or 16-bit image")
                else:
                    converted = image.convert(color)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"{name} claims more pixels than Pillow's limit (a decompression bomb?): downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image Pillow can read: give a JPEG, PNG, ... file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{name} is a corrupt or truncated image ({exc}): re-export or re-download it") from None
    return converted


def _wide_to_8bit(image: Any, name: str) -> Any:
    """A 16-bit greyscale image as 8 bits by its real range (0..65535 → 0..255, rounded), not clipped at 255.

    Pillow's own ``convert("L")`` clips, which turned a mid-grey 16-bit photograph white. The array is
    as large as the image, which the pixel limit already bounds.
    """
    from PIL import Image

    values = np.asarray(image)
    if values.dtype == np.int32 and (values.min() < 0 or values.max() > 65535):
        raise InputError(f"{name} holds 32-bit pixel values outside 0..65535: save it as an 8- or 16-bit image")
    eight = np.rint(values.astype(np.float32) / np.float32(257.0)).astype(np.uint8)
    return Image.fromarray(eight, mode="L")


def preprocess_image(image: Any, spec: PreprocessSpec) -> np.ndarray:
    """Apply ``spec`` to a Pillow image; returns a float32 array (C, H, W), or (H, W, C) for NHWC."""
    from PIL import Image

    if image.mode != spec.color:
        image = image.convert(spec.color)
    if spec.interpolation not in _RESAMPLE:
        raise InputError(f"unknown interpolation {spec.interpolation!r}: use one of {sorted(_RESAMPLE)}")
    width, height = image.size
    # torchvision.transforms.functional.resize with an int: shorter side to `resize`,
    # the longer one scaled with int() truncation, as torchvision does.
    if width <= height:
        new_w, new_h = spec.resize, int(spec.resize * height / width)
    else:
        new_h, new_w = spec.resize, int(spec.resize * width / height)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise InputError(
            f"the image is {width}x{height}: resizing its shorter side to {spec.resize} would make {new_w}x{new_h} "
            f"pixels, over the {MAX_RESIZED_PIXELS:,}-pixel limit; crop it to a less extreme shape first"
        )
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling(_RESAMPLE[spec.interpolation]))
    crop_h, crop_w = spec.crop
    if new_w < crop_w or new_h < crop_h:
        raise InputError(f"image resized to {new_w}x{new_h} is smaller than the {crop_w}x{crop_h} crop")
    # torchvision's center_crop rounds the offsets with int(round(x / 2.0)) (round half to even).
    top = round((new_h - crop_h) / 2.0)
    left = round((new_w - crop_w) / 2.0)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    array = np.asarray(image, dtype=np.float32)
    divisor = 1.0 / spec.scale
    if abs(divisor - round(divisor)) < 1e-6:
        # torchvision's ToTensor divides by 255; dividing (not multiplying by 1/255) keeps it bit-exact.
        array = array / np.float32(round(divisor))
    else:
        array = array * np.float32(spec.scale)
    if array.ndim == 2:
        array = array[:, :, None]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    array = (array - mean) / std
    if spec.layout == "NHWC":
        return np.ascontiguousarray(array, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; an error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: give a folder of images (JPEG, PNG, ...)")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}): add some photographs")
    return paths


def load_batch(paths: list[Path], spec: PreprocessSpec) -> np.ndarray:
    """Load and preprocess image files into one float32 batch (N, C, H, W)."""
    return np.stack([preprocess_image(load_image(p, color=spec.color), spec) for p in paths])
