"""The edge runtime: onnxruntime, numpy and Pillow only, never torch."""
