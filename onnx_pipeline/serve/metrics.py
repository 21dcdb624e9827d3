"""The server's Prometheus metrics, kept in a registry of its own (several servers may share a process).

Names (all prefixed ``onnx_pipeline_``):

- ``requests_total{endpoint, status}``: answered requests, by route template and HTTP status;
- ``request_seconds{endpoint}``: latency histogram, from the first byte read to the response sent;
- ``batch_size{model}``: rows per batch run (histogram), ``batch_requests{model}``: requests per batch;
- ``inference_seconds{model}``: time of each batch in onnxruntime;
- ``queue_depth{model}``: requests admitted and not yet answered (gauge);
- ``rejected_total{model}``: requests refused with 503 because the queue was full;
- ``model_info{model, path, file, precision, providers}`` (always 1) and ``model_load_seconds{model}``.
"""

from __future__ import annotations

from collections.abc import Callable

from onnx_pipeline.serve.batching import BatchObserver

_PREFIX = "onnx_pipeline_"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Every metric of one server, and the text ``GET /metrics`` returns."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            _PREFIX + "requests", "Answered HTTP requests.", ["endpoint", "status"], registry=registry
        )
        self.latency = Histogram(
            _PREFIX + "request_seconds", "Request latency.", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=registry
        )
        self.batch_size = Histogram(
            _PREFIX + "batch_size", "Rows per batch run.", ["model"], buckets=_BATCH_BUCKETS, registry=registry
        )
        self.batch_requests = Histogram(
            _PREFIX + "batch_requests", "Requests per batch run.", ["model"], buckets=_BATCH_BUCKETS, registry=registry
        )
        self.inference = Histogram(
            _PREFIX + "inference_seconds",
            "Time of one batch in onnxruntime.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            _PREFIX + "queue_depth", "Requests admitted and not yet answered.", ["model"], registry=registry
        )
        self.rejected = Counter(
            _PREFIX + "rejected", "Requests refused because the queue was full.", ["model"], registry=registry
        )
        self.model_info = Gauge(
            _PREFIX + "model_info",
            "A loaded model (always 1).",
            ["model", "path", "file", "precision", "providers"],
            registry=registry,
        )
        self.load_seconds = Gauge(
            _PREFIX + "model_load_seconds", "Time to check and load a model.", ["model"], registry=registry
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch_observer(self, model: str) -> BatchObserver:
        """The callback a model's batcher calls after each batch."""
        rows_hist = self.batch_size.labels(model)
        requests_hist = self.batch_requests.labels(model)
        seconds_hist = self.inference.labels(model)

        def observe(rows: int, requests: int, seconds: float) -> None:
            rows_hist.observe(rows)
            requests_hist.observe(requests)
            seconds_hist.observe(seconds)

        return observe

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        """Read the queue depth of ``model`` from ``depth`` at each scrape."""
        self.queue_depth.labels(model).set_function(lambda: float(depth()))

    def loaded(self, model: str, path: str, file: str, precision: str, providers: str, seconds: float) -> None:
        """Record a loaded model."""
        self.model_info.labels(model, path, file, precision, providers).set(1)
        self.load_seconds.labels(model).set(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
