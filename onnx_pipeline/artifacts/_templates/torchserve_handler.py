"""TorchServe handler written by onnx-pipeline: the bundle's preprocessing, its TorchScript model, the top-k.

Archived as ``handler.py`` in ``model.mar`` beside ``model.pt``, ``index_to_name.json`` (class names) and
``handler.json`` (the bundle's preprocessing and ``top_k``). Each request's body is one image file
(JPEG, PNG, ...); each answer is the seed's ``/predict`` JSON, ``class_id`` and ``class_name``, plus
``probability`` and ``top_k``. Requests TorchServe batches together run as one batch.

The preprocessing mirrors ``onnx_pipeline.runtime.preprocess.preprocess_image`` (torchvision's
classification preset, with Pillow and numpy) so this file needs nothing beyond TorchServe's own
dependencies; the tests hold the two equal on photographs.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

#: Pillow's resampling filters by the names a bundle's preprocessing uses
RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}
#: images above this many pixels are refused (decompression bombs)
MAX_IMAGE_PIXELS = 64_000_000


def preprocess_image(data: bytes, spec: dict[str, Any]) -> np.ndarray:
    """One encoded image as the model input sample (C, H, W; H, W, C for NHWC), float32."""
    with Image.open(io.BytesIO(data)) as opened:
        width, height = opened.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"the image is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS}-pixel limit")
        if opened.mode == "P" and "transparency" in opened.info:
            image = opened.convert("RGBA").convert(spec["color"])
        elif opened.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            values = np.rint(np.asarray(opened).astype(np.float32) / np.float32(257.0)).astype(np.uint8)
            image = Image.fromarray(values, mode="L").convert(spec["color"])
        else:
            image = opened.convert(spec["color"])
    resize = int(spec["resize"])
    if width <= height:  # torchvision's resize: the shorter side to `resize`, the other truncated
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_h, new_w = resize, int(resize * width / height)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling(RESAMPLE[spec["interpolation"]]))
    crop_h, crop_w = (int(c) for c in spec["crop"])
    if new_w < crop_w or new_h < crop_h:
        raise ValueError(f"the image resized to {new_w}x{new_h} is smaller than the {crop_w}x{crop_h} crop")
    top, left = round((new_h - crop_h) / 2.0), round((new_w - crop_w) / 2.0)  # torchvision's center_crop
    array: np.ndarray = np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), dtype=np.float32)
    divisor = 1.0 / float(spec["scale"])
    if abs(divisor - round(divisor)) < 1e-6:  # ToTensor divides by 255
        array = array / np.float32(round(divisor))
    else:
        array = array * np.float32(spec["scale"])
    if array.ndim == 2:
        array = array[:, :, None]
    array = (array - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    if spec.get("layout", "NCHW") == "NHWC":
        return np.ascontiguousarray(array, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


def probabilities(outputs: np.ndarray) -> np.ndarray:
    """Softmax of the outputs, unless they already are probabilities (as onnx-pipeline's runtime decides)."""
    values = outputs.astype(np.float64).reshape(len(outputs), -1)
    if np.all(values >= 0.0) and np.all(values <= 1.0) and np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        return values
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class BundleClassifier(BaseHandler):  # type: ignore[misc]
    """Images in, ``{class_id, class_name, probability, top_k}`` out, one answer per request."""

    def initialize(self, context: Any) -> None:
        super().initialize(context)  # loads model.pt (TorchScript) and index_to_name.json
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "handler.json"), encoding="utf-8") as handle:
            settings = json.load(handle)
        self.spec = settings["preprocessing"]
        self.top_k = int(settings.get("top_k", 5))

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        samples = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, str):
                body = body.encode("latin-1")
            if not isinstance(body, bytes | bytearray) or not body:
                raise ValueError("send one image file (JPEG, PNG, ...) as the request body")
            samples.append(preprocess_image(bytes(body), self.spec))
        return torch.from_numpy(np.stack(samples)).to(self.device)

    def postprocess(self, data: Any) -> list[dict[str, Any]]:
        output = data[0] if isinstance(data, list | tuple) else data
        probs = probabilities(output.detach().cpu().numpy())
        answers = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[: min(self.top_k, len(row))]
            top = [
                {"class_id": int(i), "class_name": (self.mapping or {}).get(str(int(i))), "probability": float(row[i])}
                for i in order
            ]
            answers.append({**top[0], "top_k": top})
        return answers
