"""Comparisons that explain a difference: the measured noise floor, first-divergence localisation
(ONNX against PyTorch), and the per-layer table of one ONNX model against another.

- ``floor``: PyTorch float32's own error against a float64 run, and the ONNX model's against it.
- ``outputs``: every figure for one model output, judged by the noise floor or the scale-aware rule.
- ``reference``: the PyTorch runs (float64, chosen modules' outputs); torch imported inside.
- ``scopes``: which PyTorch module each ONNX node came from (exporter metadata or scope names).
- ``probe``: run an ONNX model with a few intermediate tensors as outputs, a few at a time.
- ``localize``: walk the graph in order and name the first module whose output leaves the floor.
- ``layers``: ``compare_onnx_models`` - SQNR and cosine per layer, fp32 against its fp16/QDQ form.

Nothing here imports torch, onnx or onnxruntime at import time.
"""
