"""``onnx-pipeline serve``: bundles behind HTTP for the seed's clients, TorchServe's and Triton/KServe's.

Torch-free (onnxruntime, numpy, Pillow, Starlette, uvicorn, prometheus-client). ``config`` says what to
serve, ``models`` loads and names the bundles, ``batching`` gathers requests into batches,
``protocol_v2`` reads and writes the Open Inference Protocol, ``metrics`` keeps the Prometheus
metrics, ``app`` holds the routes and ``server`` runs it all.
"""

from onnx_pipeline.serve.config import ServeConfig
from onnx_pipeline.serve.server import BackgroundServer, ServedModelInfo, ServerInfo, ready_lines, serve

__all__ = ["BackgroundServer", "ServeConfig", "ServedModelInfo", "ServerInfo", "ready_lines", "serve"]
