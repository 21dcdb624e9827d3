"""What ``onnx-pipeline serve`` is asked to do, checked once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from onnx_pipeline.errors import InputError

MiB = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    """The bundles to serve and how.

    ``bundles``: bundle or run folders, each optionally named ``NAME=PATH`` (otherwise the name is
    derived, see ``onnx_pipeline.serve.models.served_names``). ``port = 0`` picks a free port (the
    ready message says which). ``max_batch_size`` and ``max_queue_delay_ms`` drive the dynamic
    batcher of models with a dynamic batch axis; ``max_queue_size`` is how many requests per model
    may be admitted at once before the next gets 503. ``max_body_bytes`` bounds a request body
    (413 above it). ``model`` picks which model of each bundle (a precision or a file name; default:
    the bundle's default model) and ``providers`` overrides the bundles' execution providers.
    ``graceful_timeout_s`` bounds how long a stop waits for requests in flight.
    """

    bundles: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_queue_delay_ms: float = 5.0
    max_queue_size: int = 64
    max_body_bytes: int = 16 * MiB
    top_k: int = 5
    model: str | None = None
    providers: tuple[str, ...] | None = None
    graceful_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.bundles:
            raise InputError("give at least one bundle folder to serve")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be between 0 and 65535, not {self.port}")
        for name, flag in (
            ("max_batch_size", "--max-batch-size"),
            ("max_queue_size", "--max-queue-size"),
            ("top_k", "--top-k"),
            ("max_body_bytes", "the body limit (--max-body-mb)"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{flag} must be a positive integer, not {value!r}")
        if self.max_batch_size > 1024:
            raise InputError(f"--max-batch-size above 1024 is refused, got {self.max_batch_size}")
        for name in ("max_queue_delay_ms", "graceful_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 <= value <= 3_600_000:
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, not {value!r}")
