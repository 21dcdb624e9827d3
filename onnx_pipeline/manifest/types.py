"""The manifest types: ``RunManifest`` and ``BundleManifest`` with their validating ``read`` and ``write``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from onnx_pipeline.errors import InputError, IntegrityError
from onnx_pipeline.files import to_jsonable, write_json
from onnx_pipeline.imagespec import PreprocessSpec
from onnx_pipeline.manifest.fields import Fields, TensorSpec
from onnx_pipeline.manifest.folder import (
    BUNDLE_SCHEMA,
    BUNDLE_SCHEMAS,
    MANIFEST,
    RUN_SCHEMA,
    RUN_SCHEMAS,
    check_files,
    content_digest,
    inside,
    load_raw,
)

#: bundle schema /1 kept each artifact kind's section at the top level under these names
_V1_SECTIONS = {"quantization": "int8-qdq", "fp16": "fp16", "triton": "triton", "vitis": "vitis-ai"}

M = TypeVar("M", bound="ManifestBase")


# --------------------------------------------------------------------------- manifest types


@dataclass(frozen=True)
class ModelSource:
    """Where the PyTorch model of a run came from (provenance; nothing here is run unless the user asks)."""

    #: the ``--model`` name (a registry name, ``file.py:factory`` or an archive's file name)
    model: str
    #: "torchvision", "builtin", "factory" or "torchscript"
    kind: str
    #: where the code or archive lives (provenance: never run unless the user opts in)
    location: str = ""
    #: "random", "imagenet", "embedded" (TorchScript) or the weights file given
    weights: str = "random"
    #: the weights file used, if any (provenance: read only when the user opts in)
    weights_file: str | None = None
    #: sha256 of that weights file
    weights_sha256: str | None = None
    #: seed of random weights and of the verification inputs
    seed: int = 0
    #: random weights were rescaled to unit output std (see sources.weights)
    rescaled_random: bool = True

    @property
    def runs_code(self) -> bool:
        """Rebuilding this model would run code or read a file named by the manifest (a factory, an archive, a path)."""
        return self.kind not in ("torchvision", "builtin") or self.weights not in ("random", "imagenet")

    @classmethod
    def from_dict(cls, data: Any, where: Path) -> ModelSource:
        if not isinstance(data, dict):
            raise InputError(f"{where}: 'source' must be a JSON object: rebuild the folder")
        f = Fields(data, where)
        kind = f.get_str("kind", "torchvision")
        if kind not in ("torchvision", "builtin", "factory", "torchscript"):
            raise f.fail("kind", "torchvision, builtin, factory or torchscript")
        return cls(
            model=f.get_str("model"),
            kind=kind,
            location=f.get_str("location", ""),
            weights=f.get_str("weights", "random"),
            weights_file=f.get_str("weights_file", None),
            weights_sha256=f.get_str("weights_sha256", None),
            seed=f.get_int("seed", 0),
            rescaled_random=f.get_bool("rescaled_random", True),
        )


@dataclass(frozen=True)
class ManifestBase:
    """What run and bundle manifests share: the folder's files, I/O, preprocessing, labels, provenance."""

    #: the model's inputs (a bundle: as its models take them)
    inputs: tuple[TensorSpec, ...]
    #: the model's outputs
    outputs: tuple[TensorSpec, ...]
    #: whether the batch axis is free
    dynamic_batch: bool
    #: "classification" or "generic"
    task: str
    #: how an image becomes the model input (``imagespec.PreprocessSpec``), or null for non-image models
    preprocessing: PreprocessSpec | None
    #: class names, one per output class (checked against the output shape), or null
    labels: tuple[str, ...] | None
    #: versions of the tools that made the folder
    versions: Mapping[str, str]
    #: seconds per stage
    timings: Mapping[str, float]
    #: {relative POSIX path: sha256} of every file of the folder (see above for what is not listed)
    files: Mapping[str, str]
    #: the folder it was read from (not written)
    root: Path | None = field(default=None, compare=False, metadata={"json": False})
    #: sha256 of manifest.json as read (not written)
    digest: str | None = field(default=None, compare=False, metadata={"json": False})

    SCHEMAS: ClassVar[tuple[str, ...]] = ()
    SCHEMA: ClassVar[str] = ""

    def path(self, rel: str, *, what: str = "the file") -> Path:
        """The file ``rel`` of this folder: listed in ``files`` and inside the folder, or ``IntegrityError``."""
        if self.root is None:
            raise ValueError("this manifest was not read from a folder")
        if rel not in self.files:
            raise IntegrityError(f"{MANIFEST} in {self.root} names {what} {rel!r} but does not list it in 'files'")
        return inside(self.root, rel, what=what)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to manifest.json (without ``content_sha256``)."""
        data: dict[str, Any] = {"schema": self.SCHEMA}
        data.update(to_jsonable(self))
        return data

    def write(self, folder: Path) -> Path:
        """Write ``folder/manifest.json`` with its ``content_sha256``; returns the path."""
        data = self.to_dict()
        data["content_sha256"] = content_digest(data)
        path = Path(folder) / MANIFEST
        write_json(path, data)
        return path

    @classmethod
    def read(cls: type[M], folder: Path | str, *, check: bool = True) -> M:
        """Read and validate ``folder/manifest.json``; with ``check``, hash every listed file too."""
        root = Path(folder)
        data, digest = load_raw(root)
        schema = data.get("schema")
        if schema not in cls.SCHEMAS:
            raise InputError(
                f"{root / MANIFEST} is not a {cls.__name__} (schema {schema!r}; expected one of "
                f"{', '.join(cls.SCHEMAS)}): give a folder written by onnx-pipeline"
            )
        manifest = cls._parse(Fields(data, root / MANIFEST), data)
        manifest = dataclasses.replace(manifest, root=root, digest=digest)
        manifest._validate()
        if check:
            check_files(root, manifest.files)
        return manifest

    @classmethod
    def _parse(cls: type[M], f: Fields, data: Mapping[str, Any]) -> M:
        raise NotImplementedError

    @staticmethod
    def _common(f: Fields) -> dict[str, Any]:
        task = f.get_str("task", "classification") or "classification"
        return {
            "inputs": f.get_tensors("inputs"),
            "outputs": f.get_tensors("outputs"),
            "dynamic_batch": f.get_bool("dynamic_batch", False),
            "task": task,
            "preprocessing": f.get_preprocessing(),
            "labels": f.get_labels(),
            "versions": {str(k): str(v) for k, v in (f.get_obj("versions") or {}).items()},
            "timings": f.get_floats("timings"),
            "files": f.get_files(),
        }

    def _validate(self) -> None:
        assert self.root is not None
        for rel in self.files:
            inside(self.root, rel, what="the file")
        classes = self.outputs[0].shape[-1] if self.outputs and self.outputs[0].shape else None
        if self.labels is not None and isinstance(classes, int) and len(self.labels) != classes:
            raise IntegrityError(
                f"{self.root / MANIFEST} has {len(self.labels)} labels but the model gives {classes} classes: "
                "the labels were replaced or cut; rebuild the folder"
            )


@dataclass(frozen=True)
class RunManifest(ManifestBase):
    """``RUN/manifest.json``: the exported model, how it was made, and its verification."""

    #: the fp32 ONNX model, listed in ``files``
    model_file: str = "model.onnx"
    #: its external weights file (over 2 GB or ``--external-data``), listed in ``files``, or null
    external_data: str | None = None
    #: the default-domain opset of the model
    opset: int = 0
    #: the model's ONNX IR version
    ir_version: int = 0
    #: the input shape with the batch axis (batch 1 when dynamic)
    input_shape: tuple[int, ...] = ()
    #: where the PyTorch model came from (``ModelSource``)
    source: ModelSource | None = None
    #: {requested, used, fallbacks, findings}: which exporter made the model
    exporter: Mapping[str, Any] = field(default_factory=dict)
    #: the simplification result (counts before and after, whether it was kept)
    simplify: Mapping[str, Any] | None = None
    #: the parity result (per-output figures, tolerances, passed)
    verification: Mapping[str, Any] | None = None

    SCHEMAS: ClassVar[tuple[str, ...]] = RUN_SCHEMAS
    SCHEMA: ClassVar[str] = RUN_SCHEMA

    @property
    def model_path(self) -> Path:
        return self.path(self.model_file, what="the model")

    @classmethod
    def _parse(cls, f: Fields, data: Mapping[str, Any]) -> RunManifest:
        shape = data.get("input_shape") or []
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise f.fail("input_shape", "a list of positive integers")
        return cls(
            **cls._common(f),
            model_file=f.get_str("model_file", "model.onnx"),
            external_data=f.get_str("external_data", None),
            opset=f.get_int("opset", 0),
            ir_version=f.get_int("ir_version", 0),
            input_shape=tuple(shape),
            source=ModelSource.from_dict(data["source"], f.where) if data.get("source") is not None else None,
            exporter=f.get_obj("exporter") or {},
            simplify=f.get_obj("simplify"),
            verification=f.get_obj("verification"),
        )

    def _validate(self) -> None:
        super()._validate()
        self.path(self.model_file, what="the model")
        if self.external_data is not None:
            self.path(self.external_data, what="the external data")


@dataclass(frozen=True)
class ModelRecord:
    """One model file of a bundle: its kind, precision, fidelity against the fp32 reference."""

    #: the model file, listed in ``files``
    file: str
    #: the artifact kind that made it (its builder module's name)
    kind: str
    #: "fp32", "fp16" or "int8"
    precision: str
    #: its figures against the fp32 reference on the held-out inputs, with the thresholds applied
    fidelity: Mapping[str, Any] | None = None
    #: onnxruntime optimization level applied offline, if any
    optimization_level: str | None = None
    #: "onnx", "ort", or another runtime's format
    format: str = "onnx"
    #: its external data files, listed in ``files``
    external_data: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """Short name for tables: the precision, plus the format when it is not plain ONNX."""
        return self.precision if self.format == "onnx" else f"{self.precision} ({self.format})"


@dataclass(frozen=True)
class TargetInfo:
    """The hardware target a bundle was built for, as recorded (the profile itself is not needed to read it)."""

    #: the target's name (a safe folder name)
    name: str
    #: what it is for
    description: str = ""
    #: the profile file it was read from
    profile: str = ""
    #: its artifact kinds
    artifacts: tuple[str, ...] = ()
    #: "static" or "dynamic"
    batch: str = "dynamic"
    #: {min, max} opsets its runtime accepts
    opset: Mapping[str, int] = field(default_factory=dict)
    #: the level applied to offline-optimised models
    offline_optimization: str | None = None


@dataclass(frozen=True)
class BundleManifest(ManifestBase):
    """``RUN/bundles/<target>/manifest.json``: the models for one target, how to run them, their fidelity."""

    #: the target it was built for (``TargetInfo``)
    target: TargetInfo = field(default_factory=lambda: TargetInfo(name="?"))
    #: every model of the bundle (``ModelRecord``)
    models: tuple[ModelRecord, ...] = ()
    #: the model a runtime loads by default (the fastest the target carries)
    default_model: str | None = None
    #: [{name, options}] in order, options as onnxruntime takes them (strings)
    execution_providers: tuple[Mapping[str, Any], ...] = ()
    #: {graph_optimization_level, intra_op_num_threads, config_entries} for the device's session
    session_options: Mapping[str, Any] = field(default_factory=dict)
    #: the precisions of its models
    precisions: tuple[str, ...] = ()
    #: how calibration data was made (images used, or SYNTHETIC), or null
    calibration: Mapping[str, Any] | None = None
    #: the held-out inputs: {file, samples, images or synthetic}
    heldout: Mapping[str, Any] | None = None
    #: each artifact kind's section ({kind: section}), as its builder returned it
    artifacts: Mapping[str, Any] = field(default_factory=dict)
    #: the run folder's {model_file, model_sha256, source, opset}
    run: Mapping[str, Any] = field(default_factory=dict)

    SCHEMAS: ClassVar[tuple[str, ...]] = BUNDLE_SCHEMAS
    SCHEMA: ClassVar[str] = BUNDLE_SCHEMA

    def model(self, file: str) -> ModelRecord:
        return next(m for m in self.models if m.file == file)

    @classmethod
    def _parse(cls, f: Fields, data: Mapping[str, Any]) -> BundleManifest:
        target = f.get_obj("target", required=True) or {}
        tf = Fields(target, f.where)
        models = data.get("models")
        if not isinstance(models, list) or not models:
            raise f.fail("models", "a non-empty list of {file, kind, precision}")
        records = [_model_record(m, f) for m in models]
        artifacts = dict(f.get_obj("artifacts") or {})
        for key, kind in _V1_SECTIONS.items():  # schema /1
            if isinstance(data.get(key), dict):
                artifacts.setdefault(kind, data[key])
        providers = _providers(data.get("execution_providers"), f)
        return cls(
            **cls._common(f),
            target=TargetInfo(
                name=tf.get_str("name"),
                description=tf.get_str("description", ""),
                profile=tf.get_str("profile", ""),
                artifacts=tuple(str(a) for a in target.get("artifacts") or []),
                batch=tf.get_str("batch", "dynamic"),
                opset=dict(target.get("opset") or {}),
                offline_optimization=tf.get_str("offline_optimization", None),
            ),
            models=tuple(records),
            default_model=f.get_str("default_model", None),
            execution_providers=tuple(providers),
            session_options=f.get_obj("session_options") or {},
            precisions=tuple(str(p) for p in data.get("precisions") or []),
            calibration=f.get_obj("calibration"),
            heldout=f.get_obj("heldout"),
            artifacts=artifacts,
            run=f.get_obj("run") or {},
        )

    def _validate(self) -> None:
        super()._validate()
        for record in self.models:
            self.path(record.file, what="the model")
            for extra in record.external_data:
                self.path(extra, what="the external data")
        if self.default_model is not None and all(m.file != self.default_model for m in self.models):
            raise InputError(f"{self.root}/{MANIFEST}: default_model {self.default_model!r} is not one of its models")
        _check_session_options(self.session_options, self.root)
        if self.heldout and self.heldout.get("file") is not None:
            self.path(str(self.heldout["file"]), what="the held-out inputs")


def _check_session_options(options: Mapping[str, Any], root: Path | None) -> None:
    """The fields of ``session_options`` a device reads: a known optimization level, thread counts >= 0."""
    from onnx_pipeline.targets import normalise_optimization_level

    level = options.get("graph_optimization_level", "all")
    ok = isinstance(level, str) and normalise_optimization_level(level) is not None
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        value = options.get(key, 0)
        ok = ok and isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4096
    entries = options.get("config_entries", {})
    ok = ok and isinstance(entries, dict) and all(isinstance(v, str | int | float) for v in entries.values())
    if not ok:
        raise InputError(f"{root}/{MANIFEST}: session_options are malformed: rebuild the bundle")


def _providers(value: Any, f: Fields) -> list[dict[str, Any]]:
    """Execution providers as [{name, options}] (names and [name, options] pairs of older manifests read too)."""
    out = []
    for entry in value or []:
        if isinstance(entry, str):
            entry = {"name": entry, "options": {}}
        elif isinstance(entry, list) and len(entry) == 2:
            entry = {"name": entry[0], "options": entry[1] or {}}
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            raise f.fail("execution_providers", "a list of {name, options}")
        options = entry.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(v, str | int | float | bool) for v in options.values()):
            raise f.fail("execution_providers", "a list of {name, options} with scalar option values")
        out.append({"name": entry["name"], "options": dict(options)})
    return out


def _model_record(item: Any, f: Fields) -> ModelRecord:
    if not isinstance(item, dict):
        raise f.fail("models", "a list of {file, kind, precision}")
    m = Fields(item, f.where)
    file = m.get_str("file")
    external = item.get("external_data") or ()
    external = (external,) if isinstance(external, str) else external
    if not isinstance(external, list | tuple) or not all(isinstance(e, str) for e in external):
        raise m.fail("external_data", "a file name or a list of file names")
    fidelity = m.get_obj("fidelity")
    thresholds = (fidelity or {}).get("thresholds")
    if thresholds is not None and (
        not isinstance(thresholds, dict)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in thresholds.values())
    ):
        raise InputError(f"{f.where}: models[].fidelity.thresholds must be an object of numbers: rebuild the bundle")
    return ModelRecord(
        file=file,
        kind=m.get_str("kind", "fp32-optimized"),
        precision=m.get_str("precision", "fp32"),
        fidelity=fidelity,
        optimization_level=m.get_str("optimization_level", None),
        format=m.get_str("format", "ort" if file.endswith(".ort") else "onnx"),
        external_data=tuple(external),
    )


def read_manifest(folder: Path | str, *, check: bool = True) -> RunManifest | BundleManifest:
    """Read a run folder's or a bundle's manifest, whichever ``folder`` holds."""
    root = Path(folder)
    data, _ = load_raw(root)
    schema = data.get("schema")
    if schema in BUNDLE_SCHEMAS:
        return BundleManifest.read(root, check=check)
    if schema in RUN_SCHEMAS:
        return RunManifest.read(root, check=check)
    raise InputError(f"{root / MANIFEST} has an unknown schema {schema!r}: give a folder written by onnx-pipeline")
