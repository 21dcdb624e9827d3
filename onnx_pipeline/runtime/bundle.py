"""Load a bundle (or a run folder), check it, and classify images with onnxruntime.

Device-side code: onnxruntime, numpy and Pillow only, never torch. The folder is read through
``onnx_pipeline.manifest`` (validated fields, every path inside the folder, every file hashed), the
same check ``onnx-pipeline verify`` makes, so both agree on what a valid bundle is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from onnx_pipeline.errors import BundleError, InputError, first_line
from onnx_pipeline.files import to_jsonable
from onnx_pipeline.imagespec import PreprocessSpec
from onnx_pipeline.manifest import MANIFEST, BundleManifest, ModelRecord, RunManifest, read_manifest
from onnx_pipeline.runtime.preprocess import load_image, preprocess_image
from onnx_pipeline.runtime.session import CPU_PROVIDER, ProviderSpec, SessionSettings, create_session, parse_providers

logger = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}

ImageSource = str | Path | bytes | Any  # Any: a Pillow image
#: kept for callers of the first API: a bundle's model entry is the manifest's ``ModelRecord``
ModelEntry = ModelRecord


@dataclass(frozen=True)
class ClassScore:
    """One entry of a top-k list."""

    class_id: int
    class_name: str | None
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return to_jsonable(self)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Prediction:
    """The classification of one image: the seed's ``{class_id, class_name}`` plus probability and top-k.

    ``class_name`` is ``None`` when the bundle carries no labels.
    """

    source: str
    class_id: int
    class_name: str | None
    probability: float
    top_k: tuple[ClassScore, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"source", "class_id", "class_name", "probability", "top_k": [...]}``."""
        return to_jsonable(self)  # type: ignore[no-any-return]


def model_entries(manifest: RunManifest | BundleManifest) -> list[ModelRecord]:
    """The models a manifest describes: a bundle's ``models``, or a run folder's one model."""
    if isinstance(manifest, BundleManifest):
        return list(manifest.models)
    external = (manifest.external_data,) if manifest.external_data else ()
    return [ModelRecord(file=manifest.model_file, kind="fp32", precision="fp32", external_data=external)]


def choose_model(entries: Sequence[ModelRecord], wanted: str | None, default: str | None = None) -> ModelRecord:
    """Pick a model by file name, precision (``int8``) or kind (``int8-qdq``).

    Without ``wanted``: the manifest's ``default_model``, else the fp32 ONNX model, else the first.
    """
    if wanted is None:
        wanted = default
        if wanted is None:
            for entry in entries:
                if entry.precision == "fp32" and entry.format == "onnx":
                    return entry
            return entries[0]
    for entry in entries:
        if wanted in (entry.file, PurePosixPath(entry.file).name):
            return entry
    matches = [e for e in entries if wanted in (e.precision, e.format, e.label, e.kind)]
    if matches:
        # "fp32" may name both the .onnx and the .ort file: prefer plain ONNX.
        return next((e for e in matches if e.format == "onnx"), matches[0])
    names = sorted({e.precision for e in entries} | {e.file for e in entries})
    raise InputError(f"this bundle has no model {wanted!r}: choose one of {names}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _looks_like_probabilities(values: np.ndarray) -> bool:
    return bool(np.all(values >= 0.0) and np.all(values <= 1.0) and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))


class Bundle:
    """A loaded bundle or run folder with a ready onnxruntime session for one of its models.

    Use ``Bundle.load(path)``; ``providers`` records what the session really uses
    (``session.get_providers()``), which may be fewer than the manifest asked for.
    """

    def __init__(
        self,
        manifest: RunManifest | BundleManifest,
        model: ModelRecord,
        session: Any,
        requested_providers: tuple[ProviderSpec, ...],
        settings: SessionSettings,
    ) -> None:
        assert manifest.root is not None
        self.root: Path = manifest.root
        self.manifest = manifest
        self.model = model
        self.models: tuple[ModelRecord, ...] = tuple(model_entries(manifest))
        self.session = session
        self.requested_providers = requested_providers
        self.settings = settings
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        self.preprocessing: PreprocessSpec | None = manifest.preprocessing
        self.labels: tuple[str, ...] | None = manifest.labels
        session_input = session.get_inputs()[0]
        self.input_name: str = session_input.name
        self.input_shape: tuple[int | str | None, ...] = tuple(session_input.shape)
        self.input_dtype = np.dtype(_ORT_DTYPES.get(session_input.type, np.float32))
        self.output_name: str = session.get_outputs()[0].name
        self._check_input_fits()

    @classmethod
    def load(
        cls,
        path: str | Path,
        providers: Sequence[str | tuple[str, Mapping[str, Any]]] | None = None,
        model: str | None = None,
        *,
        verify: bool = True,
        settings: SessionSettings | None = None,
    ) -> Bundle:
        """Load a bundle or run folder: validate its manifest, check hashes, pick a model, open a session.

        ``providers`` overrides the manifest's execution providers (names or ``(name, options)``);
        those this onnxruntime lacks are dropped with a warning. ``model`` is a precision
        (``"int8"``) or a file name; by default the manifest's ``default_model``, else fp32.
        ``settings`` overrides the manifest's ``session_options``. ``verify=False`` skips the
        hash check (for a caller that has just done it); the manifest is validated either way.
        """
        root = Path(path)
        if root.is_file():
            if root.name == MANIFEST:
                root = root.parent
            else:
                raise InputError(f"{root} is a file: give the folder that holds {MANIFEST} (a bundle or run folder)")
        elif not root.exists():
            raise InputError(f"{root} does not exist: give a bundle folder (DIR/bundles/TARGET) or a run folder")
        manifest = read_manifest(root, check=verify)
        entries = model_entries(manifest)
        default = manifest.default_model if isinstance(manifest, BundleManifest) else None
        chosen = choose_model(entries, model, default)
        if isinstance(manifest, BundleManifest):
            requested = parse_providers(providers if providers is not None else list(manifest.execution_providers))
            settings = settings or SessionSettings.from_dict(manifest.session_options)
        else:
            requested = parse_providers(providers) if providers is not None else [(CPU_PROVIDER, {})]
            settings = settings or SessionSettings()
        if chosen.format not in ("onnx", "ort"):
            raise InputError(
                f"{chosen.file} is a {chosen.format} model, which onnxruntime does not run: see the bundle's README.md "
                "for how to run it (a bundle for an onnxruntime target runs here)"
            )
        model_path = manifest.path(chosen.file, what="the model")
        session = create_session(model_path, providers=requested, settings=settings, error=BundleError)
        bundle = cls(manifest, chosen, session, tuple(requested), settings)
        logger.info("loaded %s (%s) with providers %s", model_path, chosen.label, list(bundle.providers))
        return bundle

    # ---------------------------------------------------------------- checks
    def _check_input_fits(self) -> None:
        spec = self.preprocessing
        if spec is None or len(self.input_shape) != 4:
            return
        if spec.layout == "NHWC":
            channels, height, width = self.input_shape[3], self.input_shape[1], self.input_shape[2]
        else:
            channels, height, width = self.input_shape[1], self.input_shape[2], self.input_shape[3]
        expected = (spec.channels, spec.crop[0], spec.crop[1])
        for got, want, what in zip((channels, height, width), expected, ("channels", "height", "width"), strict=True):
            if isinstance(got, int) and got != want:
                raise BundleError(
                    f"the preprocessing gives {what} {want} but {self.model.file} expects {got}: the manifest does "
                    "not match the model; rebuild the bundle"
                )

    @property
    def static_batch(self) -> int | None:
        """The model's fixed batch size, or ``None`` for a dynamic batch axis."""
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    # ---------------------------------------------------------------- running
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a preprocessed batch and return its first output (no softmax)."""
        feed = np.ascontiguousarray(batch, dtype=self.input_dtype)
        try:
            outputs = self.session.run([self.output_name], {self.input_name: feed})
        except Exception as exc:  # onnxruntime raises untyped exceptions
            raise InputError(
                f"onnxruntime could not run {self.model.file} on shape {feed.shape}: {first_line(exc)}"
            ) from None
        return np.asarray(outputs[0])

    def _run_chunked(self, batch: np.ndarray, batch_size: int | None) -> np.ndarray:
        static = self.static_batch
        size = static or batch_size or len(batch)
        results = []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            if static and len(chunk) < static:  # pad a fixed-batch model's last chunk
                pad = np.zeros((static - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                results.append(self.run(np.concatenate([chunk, pad]))[: len(chunk)])
            else:
                results.append(self.run(chunk))
        return np.concatenate(results)

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """Load (if needed) and preprocess one image into a model input sample."""
        spec = self.preprocessing
        if spec is None:
            raise InputError(f"{self.root} has no preprocessing (not an image model): use Bundle.run on arrays")
        if isinstance(image, (str, Path, bytes, bytearray)):
            image = load_image(image, color=spec.color)
        return preprocess_image(image, spec)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Turn model outputs (N, classes) into probabilities: softmax, unless they already are."""
        values = outputs.astype(np.float64).reshape(len(outputs), -1)
        if _looks_like_probabilities(values):
            return values
        return _softmax(values)

    def predict(self, image: ImageSource, top_k: int = 5) -> Prediction:
        """Classify one image (a path, encoded bytes, or a Pillow image)."""
        return self.predict_batch([image], top_k=top_k)[0]

    def predict_batch(
        self, images: Iterable[ImageSource], top_k: int = 5, batch_size: int | None = None
    ) -> list[Prediction]:
        """Classify several images, running them through the model ``batch_size`` at a time (default: all)."""
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, not {top_k}")
        items = list(images)
        if not items:
            return []
        samples = np.stack([self.preprocess(item) for item in items])
        probs = self.probabilities(self._run_chunked(samples, batch_size))
        return [self._prediction(_source_name(item), row, top_k) for item, row in zip(items, probs, strict=True)]

    def class_name(self, class_id: int) -> str | None:
        """The label of ``class_id``, or ``None`` without labels."""
        if self.labels is None or not 0 <= class_id < len(self.labels):
            return None
        return self.labels[class_id]

    def label(self, probabilities: np.ndarray, top_k: int = 5, source: str = "<image>") -> Prediction:
        """The prediction for one image's row of ``probabilities()``, as ``predict`` builds it (for servers)."""
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, not {top_k}")
        return self._prediction(source, np.asarray(probabilities).reshape(-1), top_k)

    def _prediction(self, source: str, probs: np.ndarray, top_k: int) -> Prediction:
        if self.labels is not None and len(self.labels) != len(probs):
            logger.warning("the bundle has %d labels but the model gives %d classes", len(self.labels), len(probs))
        k = min(top_k, len(probs))
        order = np.argsort(-probs, kind="stable")[:k]
        scores = tuple(ClassScore(int(i), self.class_name(int(i)), float(probs[i])) for i in order)
        best = scores[0]
        return Prediction(source, best.class_id, best.class_name, best.probability, scores)

    def describe(self) -> dict[str, Any]:
        """What was loaded, for logs and reports: folder, model, providers requested and used, settings."""
        return {
            "path": str(self.root),
            "model": self.model.file,
            "precision": self.model.precision,
            "providers_requested": [name for name, _ in self.requested_providers],
            "providers": list(self.providers),
            "session_options": to_jsonable(self.settings),
            "input": {"name": self.input_name, "shape": list(self.input_shape), "dtype": str(self.input_dtype)},
        }


def _source_name(item: ImageSource) -> str:
    if isinstance(item, (bytes, bytearray)):
        return "<bytes>"
    if isinstance(item, (str, Path)):
        return str(item)
    return getattr(item, "filename", "") or "<image>"
