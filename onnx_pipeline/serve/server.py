"""Run the server: load and check every bundle, bind the socket, serve with uvicorn until told to stop.

``serve`` blocks (the CLI): SIGTERM or Ctrl-C stops accepting connections, finishes the requests
in flight (at most ``graceful_timeout_s``), stops the batchers and returns normally, so the process
exits 0. ``BackgroundServer`` runs the same server on a thread of this process (a notebook, a test)
and ``stop()`` ends it the same way. A bundle that fails its hash check never starts a server:
``Bundle.load`` raises ``IntegrityError`` before the socket is bound.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from onnx_pipeline.errors import InputError, PipelineError
from onnx_pipeline.serve.app import RequestLog, build_app
from onnx_pipeline.serve.config import ServeConfig
from onnx_pipeline.serve.metrics import ServerMetrics
from onnx_pipeline.serve.models import ServedModel, load_models


@dataclass(frozen=True)
class ServedModelInfo:
    """What one name serves."""

    name: str
    path: str
    file: str
    precision: str
    providers: tuple[str, ...]
    max_batch_size: int
    dynamic_batch: bool


@dataclass(frozen=True)
class ServerInfo:
    """Where a started server listens and what it serves."""

    url: str
    host: str
    port: int
    models: tuple[ServedModelInfo, ...]


def ready_lines(info: ServerInfo) -> list[str]:
    """What a person reads when the server is ready: each model, then the address."""
    lines = []
    for m in info.models:
        batching = f"batches up to {m.max_batch_size}" if m.dynamic_batch else f"fixed batch {m.max_batch_size}"
        lines.append(f"{m.name}: {m.file} ({m.precision}) on {', '.join(m.providers)}, {batching}")
    endpoints = "POST /predict, /predictions/MODEL, /v2/models/MODEL/infer; GET /metrics"
    return [*lines, f"serving at {info.url} ({endpoints})"]


def _info(host: str, port: int, models: list[ServedModel]) -> ServerInfo:
    shown = f"[{host}]" if ":" in host else host
    return ServerInfo(
        url=f"http://{shown}:{port}",
        host=host,
        port=port,
        models=tuple(
            ServedModelInfo(
                name=m.name,
                path=str(m.bundle.root),
                file=m.bundle.model.file,
                precision=m.bundle.model.precision,
                providers=tuple(m.bundle.providers),
                max_batch_size=m.batcher.max_batch_size,
                dynamic_batch=m.bundle.static_batch is None,
            )
            for m in models
        ),
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP (else Nagle and
    # delayed ACKs add ~40 ms to every response written in two parts).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port (0 picks a free one)"
        ) from None
    return sock


def _prepare(
    config: ServeConfig, on_ready: Callable[[ServerInfo], None] | None, on_request: RequestLog | None
) -> tuple[Any, socket.socket, ServerInfo]:
    import uvicorn

    metrics = ServerMetrics()
    models = load_models(config, metrics)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    info = _info(str(host), int(port), models)
    app = build_app(
        models,
        config,
        metrics,
        on_request=on_request,
        on_started=(lambda: on_ready(info)) if on_ready is not None else None,
    )
    uvicorn_config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(config.graceful_timeout_s) or None,
    )
    return uvicorn.Server(uvicorn_config), sock, info


def _ignore(_signal: int, _frame: Any) -> None:
    pass


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """While uvicorn serves, it turns SIGTERM/SIGINT into a graceful stop and afterwards re-raises them
    to the handlers it found; let those be no-ops so the stop ends with exit code 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [name for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)]
    previous = {name: signal.signal(getattr(signal, name), _ignore) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def serve(
    config: ServeConfig,
    *,
    on_ready: Callable[[ServerInfo], None] | None = None,
    on_request: RequestLog | None = None,
) -> ServerInfo:
    """Serve until SIGTERM or Ctrl-C; returns once the requests in flight are answered."""
    server, sock, info = _prepare(config, on_ready, on_request)
    with _stop_signals_end_cleanly(), sock:
        server.run(sockets=[sock])
    if not server.started:
        raise PipelineError(f"the server at {info.url} did not start: the log above says why")
    return info


class BackgroundServer:
    """A server on a thread of this process: ``.url``, ``.info``, and ``stop()`` (or use it in ``with``)."""

    def __init__(self, config: ServeConfig, *, on_request: RequestLog | None = None, timeout_s: float = 60.0) -> None:
        started = threading.Event()
        self._server, sock, self.info = _prepare(config, lambda _: started.set(), on_request)
        self._thread = threading.Thread(target=self._run, args=(sock, started), name="onnx-pipeline-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        started.wait(timeout_s)  # set by the app's startup, or when the thread ends
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # the socket is listening already; uvicorn is a moment from accepting
        if not self._server.started:
            self.stop()
            raise PipelineError(f"the server at {self.info.url} did not start within {timeout_s:g} s")

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        try:
            with sock:
                self._server.run(sockets=[sock])
        finally:
            started.set()

    @property
    def url(self) -> str:
        """The server's base URL (``http://127.0.0.1:PORT``)."""
        return self.info.url

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop accepting connections, answer the requests in flight, and wait for the thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
