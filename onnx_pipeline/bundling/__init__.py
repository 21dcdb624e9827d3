"""Helpers of the bundle step: int8 quantization, fp16 conversion, onnxruntime tools, Triton, fidelity."""
