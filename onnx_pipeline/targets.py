"""Hardware targets: one TOML file per target in ``hardware/``, validated into a frozen ``HardwareTarget``.

This module is the only reader of ``hardware/``. Steps read a target's fields and dispatch on its
artifact kinds (``"fp32-optimized"``, ``"ort"``, ``"int8-qdq"``, ``"fp16"``, ``"triton"``,
``"vitis-ai"``); nothing branches on a target's name. Unknown keys are refused with the key and the
file named, so a typo in a profile never silently falls back to a default.

The folder is looked up inside the installed package first (the wheel maps ``hardware/`` to
``onnx_pipeline/hardware/``), then at the root of a source checkout.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from onnx_pipeline.errors import TargetError

log = logging.getLogger(__name__)

ArtifactKind = Literal["fp32-optimized", "ort", "int8-qdq", "fp16", "triton", "vitis-ai"]
Precision = Literal["fp32", "fp16", "int8"]
OptimizationLevel = Literal["disabled", "basic", "extended", "all"]

ARTIFACT_KINDS: tuple[str, ...] = ("fp32-optimized", "ort", "int8-qdq", "fp16", "triton", "vitis-ai")
#: the precision of the model each artifact kind carries ("triton" serves the fp16 model; "vitis-ai" is int8)
ARTIFACT_PRECISION: Mapping[str, str] = MappingProxyType(
    {"fp32-optimized": "fp32", "ort": "fp32", "int8-qdq": "int8", "fp16": "fp16", "triton": "fp16", "vitis-ai": "int8"}
)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
OPTIMIZATION_LEVELS: tuple[str, ...] = ("disabled", "basic", "extended", "all")
QUANT_TYPES: tuple[str, ...] = ("int8", "uint8")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
#: the opset range onnx-pipeline can export (see config.PipelineConfig)
SUPPORTED_OPSETS = (13, 23)


@dataclass(frozen=True)
class ExecutionProvider:
    """One onnxruntime execution provider, with the options passed to it at session creation."""

    name: str
    options: Mapping[str, str | int | float | bool] = field(default_factory=lambda: MappingProxyType({}))

    def as_ort(self) -> tuple[str, dict[str, str]]:
        """The (name, options) pair onnxruntime's ``InferenceSession(providers=...)`` takes (values as strings)."""
        return self.name, {k: _ort_option(v) for k, v in self.options.items()}


@dataclass(frozen=True)
class SessionSpec:
    """onnxruntime session settings: the level used on the device, and the level applied offline."""

    #: level the device's session runs at when it loads the bundle's models
    graph_optimization_level: OptimizationLevel = "all"
    #: level applied when the bundle's "fp32-optimized" and "ort" models are written; above "basic" the
    #: result is specific to the execution provider (and "all" to the CPU's instruction set)
    offline_optimization: OptimizationLevel = "extended"
    intra_op_num_threads: int = 0
    #: ``SessionOptions.add_session_config_entry`` pairs
    config_entries: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class OpsetRange:
    """The ONNX opsets the target's runtime accepts (inclusive)."""

    min: int
    max: int

    def __contains__(self, opset: object) -> bool:
        return isinstance(opset, int) and self.min <= opset <= self.max


@dataclass(frozen=True)
class FidelityThresholds:
    """Minimum agreement of a bundle model with the fp32 reference on held-out inputs."""

    min_cosine: float
    min_sqnr_db: float
    min_top1_agreement: float
    min_top5_agreement: float


@dataclass(frozen=True)
class QuantizationSpec:
    """Static int8 QDQ quantization settings (onnxruntime.quantization)."""

    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "uint8"
    weight_type: str = "int8"
    calibration_method: str = "minmax"
    #: activations quantized symmetrically (zero point 0), as some accelerators require
    symmetric_activations: bool = False
    #: most calibration images used (the rest of a folder is held out for the fidelity check)
    max_calibration_samples: int = 64


@dataclass(frozen=True)
class Fp16Spec:
    """fp32 → fp16 conversion settings (onnxruntime.transformers.float16)."""

    keep_io_types: bool = True
    #: ops kept in fp32 because fp16 overflows or loses too much in them
    op_block_list: tuple[str, ...] = ()


@dataclass(frozen=True)
class TritonSpec:
    """How the Triton model repository is written."""

    #: largest batch Triton forms; ignored (0 is written) for static-batch models
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 100
    instance_count: int = 1
    instance_kind: str = "KIND_GPU"
    #: "tensorrt" adds the TensorRT accelerator to the ONNX Runtime backend; "" adds none
    accelerator: str = "tensorrt"
    precision_mode: str = "FP16"


@dataclass(frozen=True)
class HardwareTarget:
    """A hardware target, as read from its TOML profile."""

    name: str
    description: str
    source: Path
    execution_providers: tuple[ExecutionProvider, ...]
    session: SessionSpec
    precisions: tuple[str, ...]
    opset: OpsetRange
    batch: Literal["static", "dynamic"]
    artifacts: tuple[str, ...]
    fidelity: Mapping[str, FidelityThresholds]
    quantization: QuantizationSpec | None = None
    fp16: Fp16Spec | None = None
    triton: TritonSpec | None = None
    #: ``onnx_pipeline.vitis.dpu.DpuSpec`` when the profile has a ``[dpu]`` table
    dpu: Any = None
    references: tuple[str, ...] = ()

    @property
    def providers(self) -> list[tuple[str, dict[str, str]]]:
        """Execution providers in onnxruntime's ``providers=`` form, in order of preference."""
        return [ep.as_ort() for ep in self.execution_providers]

    def pipeline_defaults(self) -> dict[str, dict[str, Any]]:
        """The target's layer for ``config.resolve_pipeline_config`` (batch mode; opset where fixed)."""
        export: dict[str, Any] = {"dynamic_batch": self.batch == "dynamic"}
        if self.opset.min == self.opset.max:
            export["opset"] = self.opset.min
        return {"export": export}


# --- finding and listing profiles -------------------------------------------------------------


def hardware_dirs() -> list[Path]:
    """Folders searched for built-in profiles: the installed package's, then the checkout's."""
    dirs: list[Path] = []
    try:
        from importlib.resources import files

        packaged = Path(str(files("onnx_pipeline") / "hardware"))
        if packaged.is_dir():
            dirs.append(packaged)
    except (ModuleNotFoundError, TypeError, ValueError):  # pragma: no cover - unusual loaders
        pass
    checkout = Path(__file__).resolve().parent.parent / "hardware"
    if checkout.is_dir() and checkout not in dirs:
        dirs.append(checkout)
    return dirs


def _builtin_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in hardware_dirs():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def list_targets() -> list[HardwareTarget]:
    """Every built-in target, loaded and validated, sorted by name."""
    return [load_target(path) for _, path in sorted(_builtin_files().items())]


def load_target(name_or_path: str | Path) -> HardwareTarget:
    """Load a built-in target by name (``"cpu-x86_64"``) or a user's profile by path (``my.toml``)."""
    text = str(name_or_path)
    if text.endswith(".toml") or isinstance(name_or_path, Path):
        path = Path(name_or_path)
        if not path.is_file():
            raise TargetError(f"target profile {path} does not exist: give the path of a .toml file")
        return _load_file(path)
    builtin = _builtin_files()
    if text not in builtin:
        known = ", ".join(sorted(builtin)) or "none found"
        raise TargetError(f"unknown hardware target '{text}': choose one of {known}, or give a path to a .toml profile")
    return _load_file(builtin[text])


# --- validation -------------------------------------------------------------------------------

_TOP_KEYS = {
    "name",
    "description",
    "execution_providers",
    "session",
    "precisions",
    "opset",
    "batch",
    "artifacts",
    "fidelity",
    "quantization",
    "fp16",
    "triton",
    "dpu",
    "references",
}


class _Table:
    """A TOML table being validated: typed getters that name the file and key in every error."""

    def __init__(self, data: Mapping[str, Any], where: str, source: Path) -> None:
        self.data = data
        self.where = where
        self.source = source

    def key_path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, message: str) -> TargetError:
        return TargetError(f"target profile {self.source}: {message}")

    def refuse_unknown(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            place = f"in [{self.where}]" if self.where else "at the top level"
            raise self.fail(f"unknown key '{self.key_path(unknown[0])}' {place}; allowed: {', '.join(sorted(allowed))}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, choices: tuple[Any, ...] = ()) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(f"missing required key '{self.key_path(key)}'")
            return default
        value = self.data[key]
        # bool is an int in Python: refuse true where a number is expected, and 1 where a bool is
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(f"'{self.key_path(key)}' must be {names}, got {value!r}")
        if choices and value not in choices:
            raise self.fail(f"'{self.key_path(key)}' must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value

    def get_list(self, key: str, item: type, default: Any = ..., *, choices: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        values = self.get(key, list, default)
        if values is None:
            return ()
        for value in values:
            if not isinstance(value, item) or (isinstance(value, bool) and item is not bool):
                raise self.fail(f"'{self.key_path(key)}' must be a list of {item.__name__}, got {value!r}")
            if choices and value not in choices:
                raise self.fail(
                    f"'{self.key_path(key)}' holds {value!r}; allowed values: {', '.join(map(str, choices))}"
                )
        return tuple(values)

    def table(self, key: str, *, required: bool = False) -> _Table | None:
        if key not in self.data:
            if required:
                raise self.fail(f"missing required table [{self.key_path(key)}]")
            return None
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.fail(f"'{self.key_path(key)}' must be a table, got {value!r}")
        return _Table(value, self.key_path(key), self.source)


def _load_file(path: Path) -> HardwareTarget:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"target profile {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise TargetError(f"cannot read target profile {path}: {exc.strerror}") from None
    return _parse(raw, path)


def _parse(raw: dict[str, Any], source: Path) -> HardwareTarget:
    top = _Table(raw, "", source)
    top.refuse_unknown(_TOP_KEYS)
    name = top.get("name", str)
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise top.fail(
            f"'name' must be a non-empty file-name-safe string (letters, digits, '-', '_', '.'), got {name!r}"
        )
    artifacts = top.get_list("artifacts", str, choices=ARTIFACT_KINDS)
    if not artifacts:
        raise top.fail("'artifacts' must name at least one artifact kind")
    if len(set(artifacts)) != len(artifacts):
        raise top.fail(f"'artifacts' lists a kind twice: {list(artifacts)}")
    precisions = top.get_list("precisions", str, choices=PRECISIONS)
    for kind in artifacts:
        if ARTIFACT_PRECISION[kind] not in precisions:
            raise top.fail(f"artifact '{kind}' is {ARTIFACT_PRECISION[kind]} but 'precisions' is {list(precisions)}")

    providers = _parse_providers(top, source)
    session = _parse_session(top.table("session"))
    opset = _parse_opset(top.table("opset", required=True))
    fidelity = _parse_fidelity(top.table("fidelity", required=True), precisions)
    quantization = _parse_quantization(top.table("quantization"))
    fp16 = _parse_fp16(top.table("fp16"))
    triton = _parse_triton(top.table("triton"))
    dpu = None
    dpu_table = top.table("dpu")
    if dpu_table is not None:
        from onnx_pipeline.vitis.dpu import parse_dpu_table  # only Vitis AI profiles need it

        dpu = parse_dpu_table(dict(dpu_table.data), source)

    needs = {"int8-qdq": ("quantization", quantization), "triton": ("triton", triton), "vitis-ai": ("dpu", dpu)}
    for kind, (table_name, value) in needs.items():
        if kind in artifacts and value is None:
            raise top.fail(f"artifact '{kind}' needs a [{table_name}] table")
    if "triton" in artifacts and "fp16" not in artifacts:
        raise top.fail("artifact 'triton' serves the fp16 model: add 'fp16' to 'artifacts'")

    return HardwareTarget(
        name=name,
        description=top.get("description", str, ""),
        source=source,
        execution_providers=providers,
        session=session,
        precisions=precisions,
        opset=opset,
        batch=top.get("batch", str, "dynamic", choices=("static", "dynamic")),
        artifacts=artifacts,
        fidelity=fidelity,
        quantization=quantization,
        fp16=fp16 if fp16 is not None else (Fp16Spec() if "fp16" in artifacts else None),
        triton=triton,
        dpu=dpu,
        references=top.get_list("references", str, ()),
    )


def _parse_providers(top: _Table, source: Path) -> tuple[ExecutionProvider, ...]:
    entries = top.get("execution_providers", list)
    if not entries:
        raise top.fail("'execution_providers' must list at least one provider")
    providers = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise top.fail(f"execution_providers[{index}] must be a table with 'name' and 'options'")
        table = _Table(entry, f"execution_providers[{index}]", source)
        table.refuse_unknown({"name", "options"})
        name = table.get("name", str)
        if not name.endswith("ExecutionProvider"):
            raise table.fail(f"'{table.key_path('name')}' must be an onnxruntime provider name, got {name!r}")
        options = table.table("options")
        values: dict[str, str | int | float | bool] = {}
        if options is not None:
            for key in options.data:
                values[key] = options.get(key, (str, int, float, bool))
        providers.append(ExecutionProvider(name=name, options=MappingProxyType(values)))
    return tuple(providers)


def _parse_session(table: _Table | None) -> SessionSpec:
    if table is None:
        return SessionSpec()
    table.refuse_unknown({"graph_optimization_level", "offline_optimization", "intra_op_num_threads", "config_entries"})
    entries: dict[str, str] = {}
    config = table.table("config_entries")
    if config is not None:
        for key in config.data:
            entries[key] = config.get(key, str)
    threads = table.get("intra_op_num_threads", int, 0)
    if threads < 0:
        raise table.fail(f"'{table.key_path('intra_op_num_threads')}' must be >= 0, got {threads}")
    return SessionSpec(
        graph_optimization_level=table.get("graph_optimization_level", str, "all", choices=OPTIMIZATION_LEVELS),
        offline_optimization=table.get("offline_optimization", str, "extended", choices=OPTIMIZATION_LEVELS),
        intra_op_num_threads=threads,
        config_entries=MappingProxyType(entries),
    )


def _parse_opset(table: _Table | None) -> OpsetRange:
    assert table is not None
    table.refuse_unknown({"min", "max"})
    low, high = table.get("min", int), table.get("max", int)
    lo_ok, hi_ok = SUPPORTED_OPSETS
    if not lo_ok <= low <= high <= hi_ok:
        raise table.fail(f"[opset] must satisfy {lo_ok} <= min <= max <= {hi_ok}, got min={low} max={high}")
    return OpsetRange(min=low, max=high)


def _parse_fidelity(table: _Table | None, precisions: tuple[str, ...]) -> Mapping[str, FidelityThresholds]:
    assert table is not None
    table.refuse_unknown(set(PRECISIONS))
    out: dict[str, FidelityThresholds] = {}
    for precision in precisions:
        sub = table.table(precision, required=True)
        assert sub is not None
        sub.refuse_unknown({"min_cosine", "min_sqnr_db", "min_top1_agreement", "min_top5_agreement"})
        thresholds = FidelityThresholds(
            min_cosine=sub.get("min_cosine", float),
            min_sqnr_db=sub.get("min_sqnr_db", float),
            min_top1_agreement=sub.get("min_top1_agreement", float),
            min_top5_agreement=sub.get("min_top5_agreement", float),
        )
        for key in ("min_cosine", "min_top1_agreement", "min_top5_agreement"):
            value = getattr(thresholds, key)
            if not 0.0 <= value <= 1.0 and key != "min_cosine":
                raise sub.fail(f"'{sub.key_path(key)}' is a fraction in [0, 1], got {value}")
            if key == "min_cosine" and not -1.0 <= value <= 1.0:
                raise sub.fail(f"'{sub.key_path(key)}' must be in [-1, 1], got {value}")
        out[precision] = thresholds
    return MappingProxyType(out)


def _parse_quantization(table: _Table | None) -> QuantizationSpec | None:
    if table is None:
        return None
    table.refuse_unknown(
        {
            "per_channel",
            "reduce_range",
            "activation_type",
            "weight_type",
            "calibration_method",
            "symmetric_activations",
            "max_calibration_samples",
        }
    )
    samples = table.get("max_calibration_samples", int, 64)
    if samples < 1:
        raise table.fail(f"'{table.key_path('max_calibration_samples')}' must be >= 1, got {samples}")
    return QuantizationSpec(
        per_channel=table.get("per_channel", bool, True),
        reduce_range=table.get("reduce_range", bool, False),
        activation_type=table.get("activation_type", str, "uint8", choices=QUANT_TYPES),
        weight_type=table.get("weight_type", str, "int8", choices=QUANT_TYPES),
        calibration_method=table.get("calibration_method", str, "minmax", choices=CALIBRATION_METHODS),
        symmetric_activations=table.get("symmetric_activations", bool, False),
        max_calibration_samples=samples,
    )


def _parse_fp16(table: _Table | None) -> Fp16Spec | None:
    if table is None:
        return None
    table.refuse_unknown({"keep_io_types", "op_block_list"})
    keep = table.get("keep_io_types", bool, True)
    if not keep:
        raise table.fail(f"'{table.key_path('keep_io_types')}' must be true: bundles keep fp32 inputs and outputs")
    return Fp16Spec(keep_io_types=keep, op_block_list=table.get_list("op_block_list", str, ()))


def _parse_triton(table: _Table | None) -> TritonSpec | None:
    if table is None:
        return None
    table.refuse_unknown(
        {
            "max_batch_size",
            "preferred_batch_sizes",
            "max_queue_delay_microseconds",
            "instance_count",
            "instance_kind",
            "accelerator",
            "precision_mode",
        }
    )
    spec = TritonSpec(
        max_batch_size=table.get("max_batch_size", int, 8),
        preferred_batch_sizes=table.get_list("preferred_batch_sizes", int, ()),
        max_queue_delay_microseconds=table.get("max_queue_delay_microseconds", int, 100),
        instance_count=table.get("instance_count", int, 1),
        instance_kind=table.get("instance_kind", str, "KIND_GPU", choices=("KIND_GPU", "KIND_CPU", "KIND_AUTO")),
        accelerator=table.get("accelerator", str, "tensorrt", choices=("tensorrt", "")),
        precision_mode=table.get("precision_mode", str, "FP16", choices=("FP16", "FP32")),
    )
    if spec.max_batch_size < 1 or spec.instance_count < 1 or spec.max_queue_delay_microseconds < 0:
        raise table.fail("max_batch_size and instance_count must be >= 1, max_queue_delay_microseconds >= 0")
    bad = [b for b in spec.preferred_batch_sizes if not 1 <= b <= spec.max_batch_size]
    if bad:
        raise table.fail(f"preferred_batch_sizes {bad} lie outside 1..max_batch_size ({spec.max_batch_size})")
    return spec


def _ort_option(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
