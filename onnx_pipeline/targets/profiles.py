"""Reading and validating target profiles: TOML into ``HardwareTarget``, unknown keys refused.

This module is the only reader of ``hardware/``. The folder is looked up inside the installed
package first (the wheel maps ``hardware/`` to ``onnx_pipeline/hardware/``), then at the root of a
source checkout. Artifact kinds are checked against the builders by ``artifacts.builders_for``.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnx_pipeline.errors import TargetError
from onnx_pipeline.targets.serving import parse_torchserve, parse_triton
from onnx_pipeline.targets.types import (
    ARCH_JSON_TEMPLATE,
    CALIBRATION_METHODS,
    FLOWS,
    NPU_FLOWS,
    NPU_QUANT_CONFIGS,
    OPTIMIZATION_LEVELS,
    PRECISIONS,
    QUANT_TYPES,
    SUPPORTED_OPSETS,
    DpuSpec,
    ExecutionProvider,
    FallbackSpec,
    FidelityThresholds,
    Fp16Spec,
    HardwareTarget,
    NpuSpec,
    OpsetRange,
    QuantizationSpec,
    SessionSpec,
)

log = logging.getLogger(__name__)

#: a target name becomes a folder name (RUN/bundles/NAME): letters, digits, '-', '_', '.', no leading dot
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ARTIFACT_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


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
    checkout = Path(__file__).resolve().parents[2] / "hardware"
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
    "torchserve",
    "dpu",
    "npu",
    "references",
    "fallback",
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
    if not SAFE_NAME.match(name) or ".." in name:
        raise top.fail(
            f"'name' becomes a folder name: use letters, digits, '-', '_' and '.', not starting with '.' and "
            f"without '..' (at most 64 characters), got {name!r}"
        )
    artifacts = top.get_list("artifacts", str)
    if not artifacts:
        raise top.fail("'artifacts' must name at least one artifact kind")
    bad = [a for a in artifacts if not _ARTIFACT_NAME.match(a)]
    if bad:
        raise top.fail(f"'artifacts' holds {bad[0]!r}: an artifact kind is lowercase words joined by '-'")
    if len(set(artifacts)) != len(artifacts):
        raise top.fail(f"'artifacts' lists a kind twice: {list(artifacts)}")
    precisions = top.get_list("precisions", str, choices=PRECISIONS)

    providers = _parse_providers(top, source)
    session = _parse_session(top.table("session"))
    opset = _parse_opset(top.table("opset", required=True))
    fidelity = _parse_fidelity(top.table("fidelity", required=True), precisions)
    quantization = _parse_quantization(top.table("quantization"))
    fp16 = _parse_fp16(top.table("fp16"))
    triton = parse_triton(top.table("triton"))
    dpu_table = top.table("dpu")
    dpu = _parse_dpu_table(dict(dpu_table.data), source) if dpu_table is not None else None
    npu = _parse_npu(top.table("npu"))

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
        torchserve=parse_torchserve(top.table("torchserve")),
        dpu=dpu,
        npu=npu,
        references=top.get_list("references", str, ()),
        fallback=_parse_fallback(top.table("fallback")),
    )


def _parse_providers(top: _Table, source: Path) -> tuple[ExecutionProvider, ...]:
    # optional for targets whose models onnxruntime does not run (artifacts.builders_for checks the others)
    entries = top.get("execution_providers", list, [])
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
        graph_optimization_level=table.get("graph_optimization_level", str, "all", choices=tuple(OPTIMIZATION_LEVELS)),
        offline_optimization=table.get("offline_optimization", str, "extended", choices=tuple(OPTIMIZATION_LEVELS)),
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


def _parse_fallback(table: _Table | None) -> FallbackSpec:
    if table is None:
        return FallbackSpec()
    table.refuse_unknown({"max_float_layers_fraction"})
    fraction = table.get("max_float_layers_fraction", float, FallbackSpec.max_float_layers_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise table.fail(f"'{table.key_path('max_float_layers_fraction')}' must be between 0 and 1, got {fraction}")
    return FallbackSpec(max_float_layers_fraction=fraction)


def _parse_fp16(table: _Table | None) -> Fp16Spec | None:
    if table is None:
        return None
    table.refuse_unknown({"keep_io_types", "op_block_list"})
    keep = table.get("keep_io_types", bool, True)
    if not keep:
        raise table.fail(f"'{table.key_path('keep_io_types')}' must be true: bundles keep fp32 inputs and outputs")
    return Fp16Spec(keep_io_types=keep, op_block_list=table.get_list("op_block_list", str, ()))


_RANGE_KEYS = (
    "conv_kernel",
    "conv_stride",
    "depthwise_kernel",
    "depthwise_stride",
    "pool_kernel",
    "pool_stride",
    "avgpool_kernel",
)
_STR_KEYS = ("name", "family", "board", "flow", "arch_json", "vaip_config", "vitis_ai_version", "board_description")
_INT_KEYS = ("channel_parallel", "bank_depth", "conv_kernel_area_limit")
_FLOAT_KEYS = ("min_cosine", "min_top1_agreement")
_REQUIRED = ("name", "family", "board", "flow", "channel_parallel", "bank_depth")
_ALLOWED = set(_RANGE_KEYS) | set(_STR_KEYS) | set(_INT_KEYS) | set(_FLOAT_KEYS) | {"sources"}


def _parse_dpu_table(table: dict[str, Any], source: Path) -> DpuSpec:
    """Validate a profile's ``[dpu]`` table into a :class:`DpuSpec`; unknown keys are refused."""

    def fail(message: str) -> TargetError:
        return TargetError(f"target profile {source}: {message}")

    unknown = sorted(set(table) - _ALLOWED)
    if unknown:
        raise fail(f"unknown key 'dpu.{unknown[0]}' in [dpu]; allowed: {', '.join(sorted(_ALLOWED))}")
    missing = [k for k in _REQUIRED if k not in table]
    if missing:
        raise fail(f"missing required key 'dpu.{missing[0]}' in [dpu]")
    values: dict[str, Any] = {}
    for key in _STR_KEYS:
        if key in table:
            if not isinstance(table[key], str):
                raise fail(f"'dpu.{key}' must be str, got {table[key]!r}")
            values[key] = table[key]
    for key in _INT_KEYS:
        if key in table:
            value = table[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise fail(f"'dpu.{key}' must be a positive int, got {value!r}")
            values[key] = value
    for key in _FLOAT_KEYS:
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not -1.0 <= float(value) <= 1.0:
                raise fail(f"'dpu.{key}' must be a number in [-1, 1], got {value!r}")
            values[key] = float(value)
    for key in _RANGE_KEYS:
        if key in table:
            value = table[key]
            ok = (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                and 1 <= value[0] <= value[1]
            )
            if not ok:
                raise fail(f"'dpu.{key}' must be [min, max] with 1 <= min <= max, got {value!r}")
            values[key] = (int(value[0]), int(value[1]))
    if "sources" in table:
        sources = table["sources"]
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise fail(f"'dpu.sources' must be a list of str, got {sources!r}")
        values["sources"] = tuple(sources)
    if values["flow"] not in FLOWS:
        raise fail(f"'dpu.flow' must be one of {', '.join(FLOWS)}, got {values['flow']!r}")
    if not values["name"].startswith(values["family"]):
        raise fail(f"'dpu.name' {values['name']!r} does not start with 'dpu.family' {values['family']!r}")
    values.setdefault("arch_json", ARCH_JSON_TEMPLATE.format(family=values["family"], board=values["board"]))
    if values["flow"] == "vitis-ai-ep" and not values.get("vaip_config"):
        raise fail("'dpu.vaip_config' is required for flow 'vitis-ai-ep' (the board image's vaip_config.json)")
    return DpuSpec(**values)


_NPU_STR = ("device", "board", "architecture", "toolchain", "support_table", "xclbin", "target")
_NPU_INT = ("optimize_level", "threshold_gops_percent", "max_npu_subgraphs")


def _parse_npu(table: _Table | None) -> NpuSpec | None:
    """Validate a profile's ``[npu]`` table (AMD NPU flows) into an :class:`NpuSpec`."""
    if table is None:
        return None
    table.refuse_unknown({"flow", "quant_config", "quant_configs", "min_cosine", "min_top1_agreement",
                          "unconfirmed", "sources", *_NPU_STR, *_NPU_INT})  # fmt: skip
    values: dict[str, Any] = {"flow": table.get("flow", str, choices=NPU_FLOWS)}
    for key in _NPU_STR:
        values[key] = table.get(key, str, ... if key in ("device", "board", "toolchain", "support_table") else "")
    values["architecture"] = values["architecture"] or values["device"]
    for key in _NPU_INT:
        value = table.get(key, int, None)
        if value is not None and value < 0:
            raise table.fail(f"'{table.key_path(key)}' must be >= 0, got {value}")
        if value is not None or key == "optimize_level":
            values[key] = 1 if value is None else value
    for key in ("min_cosine", "min_top1_agreement"):
        value = table.get(key, float, None)
        if value is not None and not -1.0 <= value <= 1.0:
            raise table.fail(f"'{table.key_path(key)}' must be in [-1, 1], got {value}")
        values[key] = value
    values["quant_configs"] = table.get_list("quant_configs", str, choices=NPU_QUANT_CONFIGS)
    values["quant_config"] = table.get("quant_config", str, choices=values["quant_configs"] or NPU_QUANT_CONFIGS)
    values["unconfirmed"] = table.get_list("unconfirmed", str, ())
    values["sources"] = table.get_list("sources", str, ())
    return NpuSpec(**values)
