"""onnx-pipeline: PyTorch image models to verified ONNX bundles for the hardware they run on.

This module stays light (no torch, onnx or onnxruntime import) so that the CLI's ``--help``
and the edge runtime start at once; the API lives in ``onnx_pipeline.api``.
"""

__version__ = "0.1.0"
