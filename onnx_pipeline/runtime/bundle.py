"""Load a bundle (or a run folder), check its hashes, and classify images with onnxruntime.

Device-side code: onnxruntime, numpy and Pillow only, never torch. A bundle folder holds
``manifest.json`` with ``files`` ({relative path: sha256}), ``models`` (list of
``{"file", "precision", ...}``), ``inputs``/``outputs``, ``preprocessing``, ``labels`` and
``execution_providers``. A run folder (``docs/run-folder.md``) names one ``model_file`` instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from onnx_pipeline.errors import BundleError, InputError
from onnx_pipeline.files import sha256_file
from onnx_pipeline.runtime.preprocess import PreprocessSpec, load_image, preprocess_image
from onnx_pipeline.runtime.session import (
    ProviderSpec,
    SessionSettings,
    create_session,
    parse_providers,
    select_providers,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}

ImageSource = str | Path | bytes | Any  # Any: a Pillow image


@dataclass(frozen=True)
class ModelEntry:
    """One model file of a bundle: its path (relative to the bundle), precision and extra files.

    ``info`` is the manifest's entry as written (e.g. ``kind``, ``optimization_level``, ``fidelity``).
    """

    file: str
    precision: str = "fp32"
    format: str = "onnx"
    external_data: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short name for tables: the precision, plus the format when it is not plain ONNX."""
        return self.precision if self.format == "onnx" else f"{self.precision} ({self.format})"


@dataclass(frozen=True)
class ClassScore:
    """One entry of a top-k list."""

    class_id: int
    class_name: str | None
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"class_id": self.class_id, "class_name": self.class_name, "probability": self.probability}


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
        return {
            "source": self.source,
            "class_id": self.class_id,
            "class_name": self.class_name,
            "probability": self.probability,
            "top_k": [entry.to_dict() for entry in self.top_k],
        }


def read_manifest(root: Path) -> dict[str, Any]:
    """Read ``root/manifest.json``; a missing or unreadable one is an ``InputError`` saying what to give."""
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(
            f"{root} has no {MANIFEST}: give a bundle folder (DIR/bundles/TARGET) or a run folder "
            "written by `onnx-pipeline export`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}): rebuild the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is not a JSON object: rebuild the bundle")
    return manifest


def _safe_relative(root: Path, rel: str) -> Path:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BundleError(f"{MANIFEST} lists {rel!r}, which is not a path inside the bundle: rebuild the bundle")
    return root.joinpath(*pure.parts)


def verify_files(root: Path, files: Mapping[str, str]) -> None:
    """Check every listed file against its sha256; raise one ``BundleError`` naming every bad file."""
    problems: list[str] = []
    for rel, expected in files.items():
        path = _safe_relative(root, rel)
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        actual = sha256_file(path)
        if actual != str(expected).lower():
            problems.append(
                f"{rel} does not match its sha256 (modified or truncated: {actual[:12]}… ≠ {str(expected)[:12]}…)"
            )
    if problems:
        raise BundleError(
            f"{root} fails its integrity check: " + "; ".join(problems) + ". Copy the bundle again or rebuild it"
        )


def manifest_files(root: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
    """The manifest's ``files`` ({relative path: sha256}); a missing or empty list is a ``BundleError``."""
    files = manifest.get("files")
    if not isinstance(files, Mapping) or not files:
        raise BundleError(f"{root / MANIFEST} lists no file hashes ('files'): rebuild the bundle")
    return {str(k): str(v) for k, v in files.items()}


def model_entries(manifest: Mapping[str, Any]) -> list[ModelEntry]:
    """The models a manifest describes: a bundle's ``models`` list, or a run folder's ``model_file``."""
    models = manifest.get("models")
    if models is not None:
        if not isinstance(models, list) or not models:
            raise BundleError(f"{MANIFEST} has an empty or invalid 'models' list: rebuild the bundle")
        entries = []
        for item in models:
            if isinstance(item, str):
                item = {"file": item}
            if not isinstance(item, Mapping) or not isinstance(item.get("file"), str):
                raise BundleError(f"{MANIFEST} has a model entry without 'file': {item!r}")
            file = item["file"]
            fmt = str(item.get("format") or ("ort" if file.endswith(".ort") else "onnx"))
            external = item.get("external_data") or ()
            external = (external,) if isinstance(external, str) else tuple(str(e) for e in external)
            entries.append(
                ModelEntry(
                    file=file,
                    precision=str(item.get("precision") or "fp32"),
                    format=fmt,
                    external_data=external,
                    info=dict(item),
                )
            )
        return entries
    model_file = manifest.get("model_file")
    if isinstance(model_file, str):
        external = manifest.get("external_data")
        return [ModelEntry(file=model_file, external_data=(external,) if isinstance(external, str) else ())]
    raise BundleError(f"{MANIFEST} names no model ('models' or 'model_file'): rebuild the bundle")


def choose_model(entries: Sequence[ModelEntry], wanted: str | None, default: str | None = None) -> ModelEntry:
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
    matches = [e for e in entries if wanted in (e.precision, e.format, e.label, e.info.get("kind"))]
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


def _label_text(label: Any) -> str:
    # Tolerate the seed's imagenet_class_index style ["n01440764", "tench"]: keep the readable name.
    if isinstance(label, (list, tuple)) and label:
        return str(label[-1])
    return str(label)


class Bundle:
    """A loaded bundle or run folder with a ready onnxruntime session for one of its models.

    Use ``Bundle.load(path)``; ``providers`` records what the session really uses
    (``session.get_providers()``), which may be fewer than the manifest asked for.
    """

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        model: ModelEntry,
        models: tuple[ModelEntry, ...],
        session: Any,
        requested_providers: tuple[ProviderSpec, ...],
        settings: SessionSettings,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.model = model
        self.models = models
        self.session = session
        self.requested_providers = requested_providers
        self.settings = settings
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        raw_pre = manifest.get("preprocessing")
        self.preprocessing: PreprocessSpec | None = PreprocessSpec.from_dict(raw_pre) if raw_pre else None
        labels = manifest.get("labels")
        self.labels: tuple[str, ...] | None = tuple(_label_text(x) for x in labels) if labels else None
        session_input = session.get_inputs()[0]
        self.input_name: str = session_input.name
        self.input_shape: tuple[int | str | None, ...] = tuple(session_input.shape)
        self.input_dtype = np.dtype(_ORT_DTYPES.get(session_input.type, np.float32))
        self.output_name: str = session.get_outputs()[0].name
        self._check_input_fits()
        self._output_kind = self._declared_output_kind()

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
        """Load a bundle or run folder: check hashes, pick a model, open an onnxruntime session.

        ``providers`` overrides the manifest's execution providers (names or ``(name, options)``);
        those this onnxruntime lacks are dropped with a warning. ``model`` is a precision
        (``"int8"``) or a file name; by default the manifest's ``default_model``, else fp32.
        ``settings`` overrides the manifest's ``session_options``. ``verify=False`` skips the
        hash check (for a caller that has just done it).
        """
        import onnxruntime as ort

        root = Path(path)
        if root.is_file():
            if root.name == MANIFEST:
                root = root.parent
            else:
                raise InputError(f"{root} is a file: give the folder that holds {MANIFEST} (a bundle or run folder)")
        elif not root.exists():
            raise InputError(f"{root} does not exist: give a bundle folder (DIR/bundles/TARGET) or a run folder")
        manifest = read_manifest(root)
        files = manifest_files(root, manifest)
        entries = model_entries(manifest)
        default = manifest.get("default_model")
        chosen = choose_model(entries, model, default if isinstance(default, str) else None)
        for needed in (chosen.file, *chosen.external_data):
            if needed not in files:
                raise BundleError(f"{needed} is not listed in {MANIFEST} 'files', so it cannot be verified")
        if verify:
            verify_files(root, files)
        requested = parse_providers(providers if providers is not None else manifest.get("execution_providers"))
        selected = select_providers(requested, ort.get_available_providers())
        if settings is None:
            settings = SessionSettings.from_dict(manifest.get("session_options") or manifest.get("session"))
        model_path = _safe_relative(root, chosen.file)
        session = create_session(str(model_path), selected, settings)
        bundle = cls(root, manifest, chosen, tuple(entries), session, tuple(requested), settings)
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

    def _declared_output_kind(self) -> str | None:
        outputs = self.manifest.get("outputs")
        candidates: list[Any] = [self.model.info.get("output_kind"), self.manifest.get("output_kind")]
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], Mapping):
            candidates.append(outputs[0].get("kind"))
        for kind in candidates:
            if kind in ("logits", "probabilities"):
                return str(kind)
        return None

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
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"onnxruntime could not run {self.model.file} on shape {feed.shape}: {message}") from exc
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
        kind = self._output_kind
        if kind == "probabilities" or (kind is None and _looks_like_probabilities(values)):
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
            "session_options": self.settings.to_dict(),
            "input": {"name": self.input_name, "shape": list(self.input_shape), "dtype": str(self.input_dtype)},
        }


def _source_name(item: ImageSource) -> str:
    if isinstance(item, (bytes, bytearray)):
        return "<bytes>"
    if isinstance(item, (str, Path)):
        return str(item)
    return getattr(item, "filename", "") or "<image>"
