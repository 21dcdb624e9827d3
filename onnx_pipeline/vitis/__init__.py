"""Vitis AI (AMD DPU) bundles: power-of-two XINT8 quantization, the DPU operator report, the board hand-off.

Import the submodules directly (``onnx_pipeline.vitis.bundle``, ``.dpu``, ``.quantize``, ``.report``);
this package imports nothing heavy.
"""
