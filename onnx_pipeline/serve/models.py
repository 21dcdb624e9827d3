"""The models a server holds: each bundle loaded (hashes checked), named, and given its batcher.

Names: a model is served under the name its Triton repository uses, the model source's name
made safe for a URL (``vgg16``, ``my_models_py_build`` for ``my_models.py:build``), so that a client
calls ``/v2/models/vgg16/infer`` on ``serve`` and on Triton/KServe alike. When two bundles would
share a name (the same model for two targets), each is qualified by its target
(``vgg16-cpu-x86_64``). ``NAME=PATH`` names a bundle explicitly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_pipeline.artifacts.triton import model_name as triton_model_name
from onnx_pipeline.errors import InputError
from onnx_pipeline.manifest import BundleManifest
from onnx_pipeline.runtime import Bundle, Prediction
from onnx_pipeline.serve.batching import DynamicBatcher
from onnx_pipeline.serve.config import ServeConfig
from onnx_pipeline.serve.metrics import ServerMetrics
from onnx_pipeline.serve.protocol_v2 import TensorMetadata, model_metadata

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
#: onnxruntime's tensor type names → v2 datatypes
_ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
}
PLATFORM = "onnxruntime_onnx"


@dataclass
class ServedModel:
    """One loaded bundle behind a name, with its batcher and its v2 description."""

    name: str
    bundle: Bundle
    batcher: DynamicBatcher
    input: TensorMetadata
    output: TensorMetadata
    load_seconds: float

    def metadata(self) -> dict[str, object]:
        """The v2 model metadata."""
        return model_metadata(self.name, PLATFORM, [self.input], [self.output])

    async def classify(self, image: bytes, top_k: int, source: str = "<upload>") -> Prediction:
        """Decode and preprocess ``image`` (the runtime's limits apply) and run it, batched, on the worker; label it."""
        outputs = await self.batcher.infer(lambda: self.bundle.preprocess(image)[None], rows=1)
        # One row at a time, as predict() does: whether a row is already probabilities is judged per image.
        return self.bundle.label(self.bundle.probabilities(outputs)[0], top_k, source)

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a checked input batch and return the model's output."""
        return await self.batcher.infer(batch)


def _tensor(name: str, ort_type: str, shape: Sequence[int | str | None]) -> TensorMetadata:
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return TensorMetadata(name, _ORT_TO_V2.get(ort_type, ort_type), dims)


def parse_bundle_argument(text: str) -> tuple[str | None, Path]:
    """``PATH`` or ``NAME=PATH``; a path that exists as given wins over a ``NAME=`` reading."""
    name, sep, rest = text.partition("=")
    if not sep or Path(text).exists():
        return None, Path(text)
    if not _SAFE_NAME.fullmatch(name):
        raise InputError(f"{name!r} is not a model name: use letters, digits, '-' and '_' (NAME=PATH)")
    return name, Path(rest)


def _source_name(bundle: Bundle) -> str:
    manifest = bundle.manifest
    if isinstance(manifest, BundleManifest):
        source = manifest.run.get("source") if isinstance(manifest.run, Mapping) else None
        model = source.get("model") if isinstance(source, Mapping) else None
    else:
        model = manifest.source.model if manifest.source else None
    return triton_model_name(str(model) if model else bundle.root.name)


def _target_name(bundle: Bundle) -> str:
    manifest = bundle.manifest
    return triton_model_name(manifest.target.name) if isinstance(manifest, BundleManifest) else "run"


def served_names(bundles: Sequence[tuple[str | None, Bundle]]) -> list[str]:
    """The name of each bundle: given, else its source's Triton name, qualified by target where two collide."""
    bases = [given or _source_name(bundle) for given, bundle in bundles]
    names = [
        base if given or bases.count(base) == 1 else f"{base}-{_target_name(bundle)}"
        for base, (given, bundle) in zip(bases, bundles, strict=True)
    ]
    for name in names:
        if names.count(name) > 1:
            raise InputError(f"two bundles would both be served as {name!r}: name them with NAME=PATH")
    return names


def load_models(config: ServeConfig, metrics: ServerMetrics) -> list[ServedModel]:
    """Load every bundle of ``config`` (a tampered one raises ``IntegrityError``) and make its batcher."""
    loaded: list[tuple[str | None, Bundle, float]] = []
    for argument in config.bundles:
        given, path = parse_bundle_argument(argument)
        start = time.perf_counter()
        bundle = Bundle.load(path, providers=list(config.providers) if config.providers else None, model=config.model)
        loaded.append((given, bundle, time.perf_counter() - start))
    names = served_names([(given, bundle) for given, bundle, _ in loaded])
    models = []
    for name, (_, bundle, seconds) in zip(names, loaded, strict=True):
        session = bundle.session
        model_input, model_output = session.get_inputs()[0], session.get_outputs()[0]
        batcher = DynamicBatcher(
            name,
            bundle.run,
            max_batch_size=config.max_batch_size,
            max_delay_s=config.max_queue_delay_ms / 1000.0,
            capacity=config.max_queue_size,
            pad_to=bundle.static_batch,
            observer=metrics.batch_observer(name),
        )
        metrics.track_queue(name, lambda b=batcher: b.admitted)  # type: ignore[misc]
        metrics.loaded(
            name, str(bundle.root), bundle.model.file, bundle.model.precision, ",".join(bundle.providers), seconds
        )
        models.append(
            ServedModel(
                name=name,
                bundle=bundle,
                batcher=batcher,
                input=_tensor(model_input.name, model_input.type, model_input.shape),
                output=_tensor(model_output.name, model_output.type, model_output.shape),
                load_seconds=seconds,
            )
        )
    return models
