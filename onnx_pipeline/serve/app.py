"""The HTTP routes: the seed's ``/predict``, TorchServe's inference API, the Open Inference Protocol v2, metrics.

Every error is a JSON object ``{"error": "..."}`` with the right status, never a traceback: 400 for
an input the server cannot use (not an image, truncated, a decompression bomb, a tensor of the
wrong shape or datatype), 404 for an unknown model or path, 413 for a body over the limit, 503
with ``Retry-After`` when a model's queue is full. ``_Gate`` (plain ASGI middleware) enforces the
body limit, times each request, counts it in the metrics and hands a record of it to
``on_request`` (the CLI's ``--json`` log lines).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onnx_pipeline.errors import InputError, PipelineError
from onnx_pipeline.serve.batching import OverloadedError, StoppedError
from onnx_pipeline.serve.config import ServeConfig
from onnx_pipeline.serve.metrics import ServerMetrics
from onnx_pipeline.serve.models import ServedModel
from onnx_pipeline.serve.protocol_v2 import (
    HEADER_LENGTH,
    check_input,
    encode_infer_response,
    parse_infer_request,
    selected_outputs,
)

logger = logging.getLogger(__name__)

RequestLog = Callable[[dict[str, Any]], None]
#: where a handler leaves the name of the model it served, for the request's metrics and log line
MODEL_KEY = "onnx_pipeline.model"


class HTTPProblem(Exception):
    """An answer other than 200: its status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class BodyTooLargeError(HTTPProblem):
    """The request body passed the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit:,}-byte limit: send a smaller image or tensor")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


class _Handlers:
    """The route handlers of one server, over its loaded models."""

    def __init__(self, models: Sequence[ServedModel], config: ServeConfig, metrics: ServerMetrics) -> None:
        self.models = {m.name: m for m in models}
        self.default = models[0]
        self.config = config
        self.metrics = metrics

    def model(self, request: Request, name: str | None) -> ServedModel:
        """The model named ``name`` (``None``: the first one), recorded for the request's log line."""
        found = self.default if name is None else self.models.get(name)
        if found is None:
            raise HTTPProblem(404, f"no model {name!r} here: this server has {sorted(self.models)}")
        request.scope[MODEL_KEY] = found.name
        return found

    def top_k(self, request: Request) -> int:
        text = request.query_params.get("top_k", str(self.config.top_k))
        try:
            value = int(text)
        except ValueError:
            raise HTTPProblem(400, f"top_k must be an integer, not {text!r}") from None
        if not 1 <= value <= 1000:
            raise HTTPProblem(400, f"top_k must be between 1 and 1000, not {value}")
        return value

    # ---------------------------------------------------------------- images: seed and TorchServe
    async def _image(self, request: Request, field: str | None) -> tuple[bytes, str]:
        """The uploaded image: a multipart field (``field``, or the first file) or the raw body."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form(max_files=8, max_fields=16) as form:
                upload = (
                    form.get(field) if field else next((v for v in form.values() if isinstance(v, UploadFile)), None)
                )
                if not isinstance(upload, UploadFile):
                    wanted = f'the multipart field "{field}"' if field else "a multipart file field"
                    raise HTTPProblem(400, f"no image in the request: send it as {wanted}")
                data, name = await upload.read(), upload.filename or "<upload>"
        else:
            data, name = await request.body(), "<body>"
        if not data:
            raise HTTPProblem(400, "the request has no image: send a JPEG, PNG, ... file")
        return data, name

    async def predict(self, request: Request) -> Response:
        model = self.model(request, request.query_params.get("model"))
        top_k = self.top_k(request)
        with model.batcher.admit():
            data, name = await self._image(request, "file")
            prediction = await model.classify(data, top_k, name)
        payload = prediction.to_dict()
        payload.pop("source", None)
        return JSONResponse({**payload, "model": model.name})

    async def torchserve_predict(self, request: Request) -> Response:
        model = self.model(request, request.path_params["model"])
        top_k = self.top_k(request)
        with model.batcher.admit():
            data, name = await self._image(request, None)
            prediction = await model.classify(data, top_k, name)
        # TorchServe's image classifier answers {label: probability} for the top k.
        return JSONResponse({str(s.class_name if s.class_name is not None else s.class_id): s.probability
                             for s in prediction.top_k})  # fmt: skip

    async def ping(self, _: Request) -> Response:
        return JSONResponse({"status": "Healthy"})

    async def list_models(self, _: Request) -> Response:
        # TorchServe lists each model's archive name; here the bundle folder's name (no path is disclosed).
        models = [{"modelName": m.name, "modelUrl": m.bundle.root.name} for m in self.models.values()]
        return JSONResponse({"models": models})

    # ---------------------------------------------------------------- Open Inference Protocol v2
    async def v2_server(self, _: Request) -> Response:
        from onnx_pipeline import __version__

        return JSONResponse({"name": "onnx-pipeline", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def v2_live(self, _: Request) -> Response:
        return JSONResponse({"live": True})

    async def v2_ready(self, _: Request) -> Response:
        return JSONResponse({"ready": True})

    def _v2_model(self, request: Request) -> ServedModel:
        version = request.path_params.get("version")
        if version is not None and version != "1":
            raise HTTPProblem(404, f"model {request.path_params['name']!r} has only version 1, not {version!r}")
        return self.model(request, request.path_params["name"])

    async def v2_model(self, request: Request) -> Response:
        return JSONResponse(self._v2_model(request).metadata())

    async def v2_model_ready(self, request: Request) -> Response:
        return JSONResponse({"name": self._v2_model(request).name, "ready": True})

    async def v2_infer(self, request: Request) -> Response:
        model = self._v2_model(request)
        with model.batcher.admit():
            body = _decoded(await request.body(), request.headers.get("content-encoding"), self.config.max_body_bytes)
            parsed = await asyncio.to_thread(parse_infer_request, body, request.headers.get(HEADER_LENGTH))
            batch = check_input(parsed, model.input)
            wanted = selected_outputs(parsed, [model.output.name])
            outputs = await model.infer(batch)
        content, headers = encode_infer_response(model.name, parsed, {model.output.name: outputs}, wanted)
        return Response(content, headers=headers)

    async def metrics_text(self, _: Request) -> Response:
        content, media_type = self.metrics.render()
        return Response(content, media_type=media_type)


def _decoded(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body, inflated when it is gzip or deflate (bounded by the body limit, so no zip bomb)."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise HTTPProblem(400, f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HTTPProblem(400, f"the {encoding} body is corrupt: {exc}") from None
    if len(data) > limit:
        raise BodyTooLargeError(limit)
    return data


def _routes(h: _Handlers) -> list[Route]:
    return [
        Route("/predict", h.predict, methods=["POST"]),
        Route("/ping", h.ping, methods=["GET"]),
        Route("/models", h.list_models, methods=["GET"]),
        Route("/predictions/{model}", h.torchserve_predict, methods=["POST", "PUT"]),
        Route("/v2", h.v2_server, methods=["GET"]),
        Route("/v2/health/live", h.v2_live, methods=["GET"]),
        Route("/v2/health/ready", h.v2_ready, methods=["GET"]),
        Route("/v2/models/{name}", h.v2_model, methods=["GET"]),
        Route("/v2/models/{name}/ready", h.v2_model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", h.v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}", h.v2_model, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", h.v2_model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/infer", h.v2_infer, methods=["POST"]),
        Route("/metrics", h.metrics_text, methods=["GET"]),
    ]


def _exception_handlers(metrics: ServerMetrics) -> dict[Any, Callable[..., Any]]:
    async def problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPProblem)
        return _error(exc.status, exc.message, exc.headers)

    async def bad_input(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, PipelineError)
        return _error(400 if isinstance(exc, InputError) else 500, exc.message)

    async def overloaded(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, OverloadedError)
        metrics.rejected.labels(exc.model).inc()
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after_s)})

    async def stopped(_: Request, exc: Exception) -> Response:
        return _error(503, f"{exc}: the server is stopping", {"Retry-After": "1"})

    async def http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    async def bug(_: Request, exc: Exception) -> Response:
        logger.error("unexpected error answering a request", exc_info=exc)
        return _error(500, "internal error: the server log has the details")

    return {
        HTTPProblem: problem,
        PipelineError: bad_input,
        OverloadedError: overloaded,
        StoppedError: stopped,
        HTTPException: http,
        Exception: bug,
    }


class _Gate:
    """ASGI middleware: the body limit, request timing, metrics and the per-request log record."""

    def __init__(self, app: Any, limit: int, metrics: ServerMetrics, on_request: RequestLog | None) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.on_request = on_request

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        received = [0]

        async def counted_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def limited_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.limit:
                    raise BodyTooLargeError(self.limit)
            return message

        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.limit:
                error = BodyTooLargeError(self.limit)
                await _error(error.status, error.message, {"Connection": "close"})(scope, receive, counted_send)
            else:
                await self.app(scope, limited_receive, counted_send)
        finally:
            self._record(scope, status[0], time.perf_counter() - start)

    def _record(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        self.metrics.observe_request(endpoint, status, seconds)
        if self.on_request is not None:
            self.on_request(
                {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "endpoint": endpoint,
                    "model": scope.get(MODEL_KEY),
                    "status": status,
                    "ms": round(seconds * 1000.0, 3),
                    "client": (scope.get("client") or [None])[0],
                }
            )


def build_app(
    models: Sequence[ServedModel],
    config: ServeConfig,
    metrics: ServerMetrics,
    *,
    on_request: RequestLog | None = None,
    on_started: Callable[[], None] | None = None,
) -> Any:
    """The ASGI application serving ``models``; their batchers run for the length of its lifespan."""
    handlers = _Handlers(models, config, metrics)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        for model in models:
            await model.batcher.start()
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            for model in models:
                await model.batcher.close()

    app = Starlette(routes=_routes(handlers), exception_handlers=_exception_handlers(metrics), lifespan=lifespan)
    return _Gate(app, config.max_body_bytes, metrics, on_request)
