"""The dynamic batcher: requests of one model gathered into batches and run off the event loop.

Each request first takes a slot (``admit``): at most ``capacity`` requests of a model are admitted
at once (reading, queued or running), and the next one is refused at once with ``OverloadedError``
(the server answers 503 with ``Retry-After``), so no request waits without bound. An admitted
request hands its work to ``infer``: rows ready to run, or a function that makes them (decoding
and preprocessing an image). A collector task on the event loop takes the waiting requests in
arrival order, up to ``max_batch_size`` rows, waiting at most ``max_delay_s`` after the oldest one
arrived for more to come, and hands each batch to one worker thread, which prepares its images
(on a small pool) and then runs it. Batches run one after another and images are prepared between
them, not beside them: onnxruntime already uses every core for one batch, and decoding beside it
would slow it by more than the decoding costs. A fixed-batch model gets batches padded to its
batch size. A request whose image cannot be prepared fails alone; a batch that fails to run is
rerun request by request, so one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from onnx_pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], np.ndarray]
#: called after each batch with (rows run, requests in it, seconds of inference)
BatchObserver = Callable[[int, int, float], None]


class OverloadedError(Exception):
    """A model's queue is full: the request is refused (HTTP 503) and may be retried later."""

    def __init__(self, model: str, capacity: int, retry_after_s: int) -> None:
        super().__init__(f"model {model!r} has {capacity} requests queued, its limit: retry later")
        self.model = model
        self.retry_after_s = retry_after_s


class StoppedError(Exception):
    """The batcher was closed before the request could run."""


Work = np.ndarray | Callable[[], np.ndarray]


@dataclass
class _Waiting:
    work: Work  # rows (N, ...), or a function that makes them
    count: int  # rows it brings
    future: asyncio.Future[np.ndarray]
    enqueued: float


class DynamicBatcher:
    """Batches of one model's requests, run one after another on a worker thread.

    ``run`` maps a batch (N, ...) to outputs (N, ...). ``max_batch_size`` is the most rows per
    batch (a fixed-batch model's batch size, for which batches are padded: ``pad_to``).
    """

    def __init__(
        self,
        name: str,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_delay_s: float,
        capacity: int,
        pad_to: int | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or capacity < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and capacity must be >= 1 and max_delay_s >= 0")
        self.name = name
        self.max_batch_size = pad_to or max_batch_size
        self.max_delay_s = max_delay_s
        self.capacity = capacity
        self.pad_to = pad_to
        self._run = run
        self._observer = observer
        self._waiting: deque[_Waiting] = deque()
        self._rows_waiting = 0
        self._admitted = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._preparers = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix=f"prep-{name}")
        #: the mean seconds per batch so far (for Retry-After)
        self._batch_seconds = 0.0
        self._batches = 0

    # ---------------------------------------------------------------- admission
    @property
    def admitted(self) -> int:
        """Requests admitted and not yet answered (decoding, waiting or running)."""
        return self._admitted

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Take one of ``capacity`` slots for the length of a request; ``OverloadedError`` when none is free."""
        if self._admitted >= self.capacity or self._closing:
            raise OverloadedError(self.name, self.capacity, self.retry_after_s())
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    def retry_after_s(self) -> int:
        """Whole seconds until the queue should have room: the time to run what is admitted, at least 1."""
        batches = self._admitted / max(self.max_batch_size, 1)
        return max(1, round(batches * self._batch_seconds))

    # ---------------------------------------------------------------- running
    async def start(self) -> None:
        """Start the collector on the running loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Run what is waiting, then stop the collector and the worker thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
        self._preparers.shutdown(wait=True)

    async def infer(self, work: Work, rows: int | None = None) -> np.ndarray:
        """Queue ``work`` for the next batch and wait for its outputs (N, ...).

        ``work`` is rows (N, ...) or a function that makes ``rows`` of them (called on the worker).
        """
        if self._wakeup is None or self._task is None or self._task.done():
            raise StoppedError(f"model {self.name!r} is not running")
        count = len(work) if isinstance(work, np.ndarray) else (rows or 1)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(work, count, future, time.perf_counter()))
        self._rows_waiting += count
        self._wakeup.set()
        return await future

    async def _collect(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._waiting:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for more rows until the oldest request has waited max_delay_s (or the batch is full).
            while self._rows_waiting < self.max_batch_size and not self._closing:
                remaining = self._waiting[0].enqueued + self.max_delay_s - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            await self._run_batch(self._take())

    def _take(self) -> list[_Waiting]:
        batch = [self._waiting.popleft()]
        rows = batch[0].count
        while self._waiting and rows + self._waiting[0].count <= self.max_batch_size:
            item = self._waiting.popleft()
            rows += item.count
            batch.append(item)
        self._rows_waiting -= rows
        return batch

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        live = [item for item in batch if not item.future.done()]  # a client gone: its future is cancelled
        if not live:
            return
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            prepared, outputs = await loop.run_in_executor(
                self._executor, self._prepare_and_run, [i.work for i in live]
            )
        except Exception as exc:
            if len(live) > 1:
                logger.debug("a batch of %d requests failed (%s): running them one by one", len(live), exc)
                for item in live:
                    await self._run_batch([item])
                return
            _fail(live[0].future, exc)
            return
        seconds = time.perf_counter() - start
        self._batches += 1
        self._batch_seconds += (seconds - self._batch_seconds) / self._batches
        ran = [(item, rows) for item, rows in zip(live, prepared, strict=True) if isinstance(rows, np.ndarray)]
        if self._observer is not None and ran:
            self._observer(sum(len(rows) for _, rows in ran), len(ran), seconds)
        offset = 0
        for item, rows in zip(live, prepared, strict=True):
            if not isinstance(rows, np.ndarray):
                _fail(item.future, rows)
                continue
            if not item.future.done():
                item.future.set_result(outputs[offset : offset + len(rows)])
            offset += len(rows)

    def _prepare_and_run(self, works: list[Work]) -> tuple[list[np.ndarray | BaseException], np.ndarray]:
        """On the worker: make each request's rows (a failure stays that request's), then run them as one batch."""
        pending = [(i, self._preparers.submit(w)) for i, w in enumerate(works) if not isinstance(w, np.ndarray)]
        prepared: list[np.ndarray | BaseException] = [w if isinstance(w, np.ndarray) else np.empty(0) for w in works]
        for index, future in pending:
            try:
                prepared[index] = future.result()
            except Exception as exc:
                prepared[index] = exc
        parts = [rows for rows in prepared if isinstance(rows, np.ndarray)]
        if not parts:
            return prepared, np.empty(0)
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        count = len(batch)
        if self.pad_to is not None and count < self.pad_to:
            batch = np.concatenate([batch, np.zeros((self.pad_to - count, *batch.shape[1:]), dtype=batch.dtype)])
        return prepared, self._run(batch)[:count]


def _fail(future: asyncio.Future[np.ndarray], exc: BaseException) -> None:
    if not isinstance(exc, PipelineError):
        # A failure the server did not expect: its traceback goes to the log, never into an answer.
        logger.error("inference failed", exc_info=exc)
    if not future.done():
        future.set_exception(exc)
