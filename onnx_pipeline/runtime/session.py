"""onnxruntime session settings and execution-provider selection, shared by the runtime and bench.

onnxruntime is imported inside the functions that need it, so importing this module is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onnx_pipeline.errors import BundleError, InputError

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}

ProviderSpec = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class SessionSettings:
    """The onnxruntime ``SessionOptions`` we set, as plain data (stored in manifests and bench results).

    ``intra_op_num_threads = 0`` lets onnxruntime choose (one thread per physical core).
    ``config_entries`` go to ``add_session_config_entry`` (e.g. ``session.intra_op.allow_spinning``).
    """

    graph_optimization_level: str = "all"
    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 0
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    config_entries: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        level = self.graph_optimization_level
        if level not in _OPT_LEVELS and level not in _OPT_LEVELS.values():
            raise InputError(f"unknown graph_optimization_level {level!r}: use one of {sorted(_OPT_LEVELS)}")
        if self.intra_op_num_threads < 0 or self.inter_op_num_threads < 0:
            raise InputError("thread counts must be >= 0 (0 lets onnxruntime choose)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SessionSettings:
        """Read settings from a manifest's ``session_options``; unknown keys are ignored (logged at debug level)."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise BundleError(f"session_options must be a JSON object, not {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            # e.g. offline_optimization (build-side) or a newer version's option: running without it is safe.
            logger.debug("ignoring session options %s", unknown)
        values = {k: v for k, v in data.items() if k in known}
        level = values.get("graph_optimization_level")
        if isinstance(level, str):
            values["graph_optimization_level"] = _normalise_level(level)
        if "config_entries" in values:
            values["config_entries"] = {str(k): str(v) for k, v in dict(values["config_entries"]).items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "graph_optimization_level": self.graph_optimization_level,
            "intra_op_num_threads": self.intra_op_num_threads,
            "inter_op_num_threads": self.inter_op_num_threads,
            "enable_cpu_mem_arena": self.enable_cpu_mem_arena,
            "enable_mem_pattern": self.enable_mem_pattern,
            "config_entries": dict(self.config_entries),
        }

    def build(self) -> Any:
        """Make an ``onnxruntime.SessionOptions``."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        level = _OPT_LEVELS.get(self.graph_optimization_level, self.graph_optimization_level)
        if not hasattr(ort.GraphOptimizationLevel, level):  # ORT_ENABLE_LAYOUT is recent
            level = "ORT_ENABLE_ALL"
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = self.inter_op_num_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = self.enable_cpu_mem_arena
        options.enable_mem_pattern = self.enable_mem_pattern
        options.log_severity_level = 3  # errors only: ORT's own warnings are noise for a user
        for key, value in self.config_entries.items():
            options.add_session_config_entry(key, value)
        return options


_LEVEL_ALIASES = {"disabled": "disable", "none": "disable", "enable_all": "all"}


def _normalise_level(level: str) -> str:
    lowered = _LEVEL_ALIASES.get(level.lower(), level.lower())
    for short, long in _OPT_LEVELS.items():
        if lowered in (short, long.lower()):
            return short
    return level  # __post_init__ refuses it with the list of valid names


def parse_providers(entries: Any) -> list[ProviderSpec]:
    """Normalise execution providers: names, ``[name, options]`` pairs or ``{"name", "options"}`` objects."""
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, Sequence):
        raise BundleError(f"execution_providers must be a list, not {type(entries).__name__}")
    parsed: list[ProviderSpec] = []
    for entry in entries:
        if isinstance(entry, str):
            parsed.append((entry, {}))
        elif isinstance(entry, Sequence) and len(entry) == 2 and isinstance(entry[0], str):
            parsed.append((entry[0], dict(entry[1] or {})))
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            parsed.append((entry["name"], dict(entry.get("options") or {})))
        else:
            raise BundleError(f"cannot read execution provider {entry!r}: give a name or [name, options]")
    return parsed


def select_providers(requested: Sequence[ProviderSpec], available: Sequence[str]) -> list[ProviderSpec]:
    """Keep the requested providers this onnxruntime has, in order; warn for each one dropped.

    With nothing left (or nothing requested) the CPU provider is used. Provider options are
    stringified, as onnxruntime's Python API expects strings.
    """
    kept: list[ProviderSpec] = []
    for name, options in requested:
        if name in available:
            kept.append((name, {str(k): _option_str(v) for k, v in options.items()}))
        else:
            logger.warning("execution provider %s is not available in this onnxruntime; skipping it", name)
    if not kept:
        if requested:
            logger.warning("none of the requested execution providers is available; using %s", CPU_PROVIDER)
        kept.append((CPU_PROVIDER, {}))
    return kept


def _option_str(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def create_session(model_path: str, providers: Sequence[ProviderSpec], settings: SessionSettings) -> Any:
    """Create an ``onnxruntime.InferenceSession``, wrapping its failure in a ``BundleError``."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            model_path,
            sess_options=settings.build(),
            providers=[name for name, _ in providers],
            provider_options=[options for _, options in providers],
        )
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"onnxruntime could not load {model_path}: {message}") from exc
