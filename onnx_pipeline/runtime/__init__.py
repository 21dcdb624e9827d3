"""The edge runtime: load a bundle, preprocess an image, run it with onnxruntime, label the result.

Imports numpy and Pillow (and onnxruntime when a bundle is loaded), never torch, so a device
can run it without PyTorch installed.
"""

from onnx_pipeline.imagespec import PreprocessSpec
from onnx_pipeline.runtime.bundle import Bundle, ClassScore, ModelEntry, Prediction
from onnx_pipeline.runtime.preprocess import load_batch, load_image, preprocess_image
from onnx_pipeline.runtime.session import SessionSettings

__all__ = [
    "Bundle",
    "ClassScore",
    "ModelEntry",
    "Prediction",
    "PreprocessSpec",
    "SessionSettings",
    "load_batch",
    "load_image",
    "preprocess_image",
]
