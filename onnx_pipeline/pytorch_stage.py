"""The PyTorch side of a run, and the process it runs in.

Everything that needs torch (building the model, its reference outputs, the export) happens in
``torch_stage`` / ``reference_stage``, which the pipeline runs in a spawned process of their own
(``call_torch``): torch and the exporter hold over 1.5 GB for VGG16 that no ``del`` gives back, and
onnxruntime should not load its copy of the weights on top of that. The worker ends with its
parent: the parent terminates it when it is interrupted (SIGINT, or SIGTERM turned into an exception
by the CLI), and the kernel sends it SIGTERM when the parent dies without a chance to (SIGKILL).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_pipeline.compare.localize import Localization
from onnx_pipeline.compare.reference import compute_reference_float64
from onnx_pipeline.config import ModelConfig, PipelineConfig, VerifyConfig
from onnx_pipeline.errors import InputError, PipelineError, StepError, first_line
from onnx_pipeline.imagespec import PreprocessSpec
from onnx_pipeline.sources import load_model, resolve_spec
from onnx_pipeline.steps.export import ExportResult, export_model
from onnx_pipeline.steps.verify import SampleSet, compute_reference, make_verification_inputs

logger = logging.getLogger(__name__)

#: above this, weights go to external data while the pipeline works (memory), see pipeline._export_into
WORK_EXTERNAL_BYTES = 64 << 20


@dataclass(frozen=True)
class TorchStage:
    """What the PyTorch side hands over: the exported file, references, and the model's metadata."""

    source: dict[str, Any]
    labels: list[str] | None
    input_shape: tuple[int, ...]
    task: str
    preprocessing: PreprocessSpec | None
    param_bytes: int
    export: ExportResult
    samples: list[SampleSet] | None
    references: list[list[Any]] | None
    timings: dict[str, float]
    findings: list[str]
    #: the same outputs in float64 (the noise floor's reference), or None and why not
    exact: list[list[Any]] | None = None
    float64_unavailable: str | None = None


def torch_stage(config: PipelineConfig, raw: Path) -> TorchStage:
    """Load the model, compute the verification references, export to ``raw``."""
    import torch

    timings: dict[str, float] = {}
    start = time.perf_counter()
    spec = resolve_spec(config.model.model)
    loaded = load_model(config.model, spec)
    timings["load"] = round(time.perf_counter() - start, 3)
    if config.export.dynamic_batch and loaded.input_shape[0] != 1:
        raise InputError("with a dynamic batch the input shape's batch axis is free: give batch 1 or --static-batch")
    samples = references = exact = None
    float64_unavailable = None
    if config.run_verify:
        start = time.perf_counter()
        samples = make_verification_inputs(
            loaded.input_shape, spec.preprocessing, config.verify, dynamic_batch=config.export.dynamic_batch
        )
        references = compute_reference(loaded.module, samples)
        timings["reference"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        exact, float64_unavailable = _float64_reference(loaded.module, samples, config.verify)
        timings["reference_float64"] = round(time.perf_counter() - start, 3)
    # torch.export specialises a dimension of size 1, so a dynamic batch is exported at batch 2.
    batch = 2 if config.export.dynamic_batch else loaded.input_shape[0]
    example = torch.zeros((batch, *loaded.input_shape[1:]))
    param_bytes = sum(t.numel() * t.element_size() for t in loaded.module.state_dict().values())
    export_cfg = config.export
    if export_cfg.external_data is None and param_bytes > WORK_EXTERNAL_BYTES:
        export_cfg = dataclasses.replace(export_cfg, external_data=True)
    exported = export_model(loaded.module, example, raw, export_cfg)
    timings["export"] = round(exported.seconds, 3)
    return TorchStage(
        source=loaded.source,
        labels=loaded.labels,
        input_shape=loaded.input_shape,
        task=spec.task,
        preprocessing=spec.preprocessing,
        param_bytes=param_bytes,
        export=exported,
        samples=samples,
        references=references,
        timings=timings,
        findings=loaded.findings + exported.findings,
        exact=exact,
        float64_unavailable=float64_unavailable,
    )


@dataclass(frozen=True)
class References:
    """PyTorch's outputs on the verification inputs, and where the model came from."""

    source: dict[str, Any]
    input_shape: tuple[int, ...]
    task: str
    samples: list[SampleSet]
    references: list[list[Any]]
    timings: dict[str, float]
    findings: list[str]
    exact: list[list[Any]] | None = None
    float64_unavailable: str | None = None


def reference_stage(
    model_config: ModelConfig, preprocessing: PreprocessSpec | None, verify: VerifyConfig, dynamic_batch: bool
) -> References:
    """Load the PyTorch model and compute its outputs on the verification inputs."""
    start = time.perf_counter()
    loaded = load_model(model_config)
    load_s = time.perf_counter() - start
    preprocessing = preprocessing or loaded.spec.preprocessing
    samples = make_verification_inputs(loaded.input_shape, preprocessing, verify, dynamic_batch=dynamic_batch)
    references = compute_reference(loaded.module, samples)
    reference_s = time.perf_counter() - start - load_s
    exact, float64_unavailable = _float64_reference(loaded.module, samples, verify)
    return References(
        source=loaded.source,
        input_shape=loaded.input_shape,
        task=loaded.spec.task,
        samples=samples,
        references=references,
        timings={
            "load": round(load_s, 3),
            "reference": round(reference_s, 3),
            "reference_float64": round(time.perf_counter() - start - load_s - reference_s, 3),
        },
        findings=loaded.findings,
        exact=exact,
        float64_unavailable=float64_unavailable,
    )


def _float64_reference(module: Any, samples: list[SampleSet], verify: VerifyConfig) -> tuple[Any, str | None]:
    """The float64 outputs the noise floor needs (the module is float32 again after); skipped, saying so,
    when fixed tolerances (``--atol``/``--rtol``) decide: float64 costs VGG16 ~1.6 s a sample on 2 cores."""
    if verify.tolerances.fixed:
        return None, "fixed tolerances decide (--atol/--rtol): the float64 run was skipped"
    return compute_reference_float64(module, samples)


def localize_stage(model_config: ModelConfig, onnx_path: Path, sample: SampleSet, verify: VerifyConfig) -> Localization:
    """Rebuild the PyTorch model and find where ``onnx_path`` first leaves its noise floor on ``sample``."""
    from onnx_pipeline.compare.localize import localize_divergence, unavailable

    try:
        return localize_divergence(
            lambda: load_model(model_config).module,
            onnx_path,
            sample.name,
            [sample.data],
            verify.tolerances,
            providers=verify.providers,
        )
    except PipelineError:
        raise
    except Exception as exc:  # hooks a scripted module refuses, an op onnxruntime cannot fetch: the verdict stands
        logger.debug("localisation failed", exc_info=True)
        return unavailable(
            f"localisation failed: {type(exc).__name__}: {first_line(exc)}", sample.name, len(sample.data)
        )


# --------------------------------------------------------------------------- the worker process


def call_torch(isolate: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` here, or in a fresh spawned process (torch is not fork-safe) when ``isolate``.

    A ``PipelineError`` raised in the worker is raised here with its message and exit code; the
    worker dying (out of memory, a crash in torch) is a ``StepError``. If this process is
    interrupted while it waits, the worker is terminated before the interruption propagates.
    """
    if not isolate:
        return fn(*args)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    worker = context.Process(target=_worker, args=(sender, fn, args), daemon=True)
    try:
        _start_with_signals_held(worker)
        sender.close()
        while not receiver.poll(0.2):
            if not worker.is_alive() and not receiver.poll(0):
                raise StepError(
                    "the PyTorch process died (out of memory, or a crash in torch): run again with --no-isolate "
                    "--debug to see where"
                )
        try:
            kind, value = receiver.recv()
        except EOFError:
            raise StepError(
                "the PyTorch process died before it answered: run again with --no-isolate --debug"
            ) from None
    except BaseException:
        if worker.pid is not None:
            worker.terminate()
            worker.join(5)
            if worker.is_alive():
                worker.kill()
        raise
    finally:
        receiver.close()
    worker.join()
    if kind == "ok":
        return value
    if kind == "error":
        error_type, message, exit_code = value
        error = error_type(message)
        error.exit_code = exit_code
        raise error
    raise StepError(f"the PyTorch process failed: {value}. Run again with --no-isolate --debug to see the traceback")


_HELD_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _held_signals() -> set[int]:
    import signal

    return {int(getattr(signal, name)) for name in _HELD_SIGNALS if hasattr(signal, name)}


def _start_with_signals_held(worker: Any) -> None:
    """Start ``worker`` with SIGINT, SIGTERM and SIGHUP held (deferred, not lost) while it starts.

    Ctrl-C reaches the whole foreground process group: a worker still starting up (before ``_worker``
    can ignore it) would die with a KeyboardInterrupt traceback on the user's terminal, and this process
    interrupted halfway through the start would leave the worker reading a half-sent request (another
    traceback). So the signals are blocked (a blocked signal stays blocked across fork and exec: the
    worker starts with them held and ``_worker`` decides) and, here, recorded while the start runs;
    once the worker is started, a recorded signal is acted on as its own handler would have, and the
    caller terminates the worker. Ignoring SIGINT here instead would lose it: the export would run on.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        worker.start()
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # first: starting it unblocks SIGINT and SIGTERM here when it is done
    caught: list[int] = []
    handlers = {number: signal.signal(number, lambda n, _f: caught.append(n)) for number in _held_signals()}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(handlers))
    try:
        worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # what arrived meanwhile reaches the recorder now
        for number, handler in handlers.items():
            signal.signal(number, handler)
    for number in dict.fromkeys(caught):
        handler = handlers[number]
        if callable(handler):
            handler(number, None)  # raises: KeyboardInterrupt, or the CLI's Terminated
        elif handler == signal.SIG_DFL:
            signal.raise_signal(number)


def _worker(sender: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import os
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates this process
    if hasattr(signal, "pthread_sigmask"):  # held while the parent started this process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _held_signals())
    _die_with_parent()
    warnings.simplefilter("ignore")  # torch's warnings would break the CLI's one-line error
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the parent's stdout may be --json: nothing of torch's goes there
    try:
        result: tuple[str, Any] = ("ok", fn(*args))
    except PipelineError as exc:
        result = ("error", (type(exc), exc.message, exc.exit_code))
    except SystemExit as exc:
        result = ("crash", f"the model's code called sys.exit({exc.code})")
    except BaseException as exc:  # a bug: the parent reports it
        result = ("crash", f"{type(exc).__name__}: {exc}")
    sender.send(result)
    sender.close()


def _die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    import os

    if os.getppid() == 1:  # the parent died before the call: nobody will terminate this process
        sys.exit(1)
