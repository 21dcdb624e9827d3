"""The one way onnx-pipeline opens an onnxruntime session, and the settings and providers it takes.

Shared by the edge runtime, the builders, verify and bench: ``create_session`` takes a model (a
path or serialised bytes), execution providers, ``SessionSettings`` and the few special modes the
pipeline needs (QDQ kept as float arithmetic, initializers handed over in memory, the optimised
model written to disk), and turns onnxruntime's failure into a one-line ``PipelineError``.
onnxruntime is imported inside the functions that need it, so importing this module is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_pipeline.errors import BundleError, InputError, PipelineError, first_line
from onnx_pipeline.targets import OPTIMIZATION_LEVELS, normalise_optimization_level

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"

ProviderSpec = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class SessionSettings:
    """The onnxruntime ``SessionOptions`` we set, as plain data (stored in manifests and bench results).

    ``graph_optimization_level`` is one of ``targets.OPTIMIZATION_LEVELS``. ``intra_op_num_threads = 0``
    lets onnxruntime choose (one thread per physical core). ``config_entries`` go to
    ``add_session_config_entry`` (e.g. ``session.intra_op.allow_spinning``).
    """

    graph_optimization_level: str = "all"
    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 0
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    config_entries: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        level = normalise_optimization_level(str(self.graph_optimization_level))
        if level is None:
            raise InputError(
                f"unknown graph_optimization_level {self.graph_optimization_level!r}: "
                f"use one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        object.__setattr__(self, "graph_optimization_level", level)
        for name in ("intra_op_num_threads", "inter_op_num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{name} must be an integer >= 0 (0 lets onnxruntime choose), got {value!r}")
        object.__setattr__(self, "config_entries", {str(k): str(v) for k, v in dict(self.config_entries).items()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SessionSettings:
        """Read settings from a manifest's ``session_options``; unknown keys are ignored (logged at debug level)."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise InputError(f"session_options must be a JSON object, not {type(data).__name__}: rebuild the bundle")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            # e.g. offline_optimization (build-side) or a newer version's option: running without it is safe.
            logger.debug("ignoring session options %s", unknown)
        values = {k: v for k, v in data.items() if k in known}
        entries = values.get("config_entries")
        if entries is not None and not isinstance(entries, Mapping):
            raise InputError("session_options.config_entries must be a JSON object: rebuild the bundle")
        for key in ("enable_cpu_mem_arena", "enable_mem_pattern"):
            if key in values and not isinstance(values[key], bool):
                raise InputError(f"session_options.{key} must be true or false: rebuild the bundle")
        try:
            return cls(**values)
        except TypeError as exc:
            raise InputError(f"session_options are malformed ({first_line(exc)}): rebuild the bundle") from None

    def build(self) -> Any:
        """Make an ``onnxruntime.SessionOptions``."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = optimization_level(self.graph_optimization_level)
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = self.inter_op_num_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = self.enable_cpu_mem_arena
        options.enable_mem_pattern = self.enable_mem_pattern
        options.log_severity_level = 3  # errors only: ORT's own warnings are noise for a user
        for key, value in self.config_entries.items():
            options.add_session_config_entry(key, value)
        return options


def optimization_level(name: str) -> Any:
    """onnxruntime's ``GraphOptimizationLevel`` member for a level name of ``targets.OPTIMIZATION_LEVELS``."""
    import onnxruntime as ort

    canonical = normalise_optimization_level(name)
    if canonical is None:
        raise InputError(f"unknown graph optimization level {name!r}: use one of {', '.join(OPTIMIZATION_LEVELS)}")
    member = OPTIMIZATION_LEVELS[canonical]
    if not hasattr(ort.GraphOptimizationLevel, member):  # ORT_ENABLE_LAYOUT is recent
        member = "ORT_ENABLE_ALL"
    return getattr(ort.GraphOptimizationLevel, member)


def parse_providers(entries: Any) -> list[ProviderSpec]:
    """Normalise execution providers: names, ``[name, options]`` pairs or ``{"name", "options"}`` objects."""
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, Sequence):
        raise InputError(f"execution_providers must be a list, not {type(entries).__name__}")
    parsed: list[ProviderSpec] = []
    for entry in entries:
        if isinstance(entry, str):
            parsed.append((entry, {}))
        elif isinstance(entry, Sequence) and len(entry) == 2 and isinstance(entry[0], str):
            options = entry[1] or {}
            if not isinstance(options, Mapping):
                raise InputError(f"the options of execution provider {entry[0]!r} must be an object")
            parsed.append((entry[0], dict(options)))
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            options = entry.get("options") or {}
            if not isinstance(options, Mapping):
                raise InputError(f"the options of execution provider {entry['name']!r} must be an object")
            parsed.append((entry["name"], dict(options)))
        else:
            raise InputError(f"cannot read execution provider {entry!r}: give a name or [name, options]")
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


#: a session made for one short run (a probe, a variant, a check): the weights are used where they are,
#: not prepacked into a second copy, and with no arena its temporaries (a large layer's dequantized
#: weights, activations) go back to the heap after each run instead of staying reserved
ONE_SHOT = SessionSettings(enable_cpu_mem_arena=False, config_entries={"session.disable_prepacking": "1"})

#: a fidelity check's session (a bundle's build and ``verify BUNDLE`` run the same one): onnxruntime's
#: defaults without the arena, which a quantized model's dequantized weights grow by about a layer's
#: float32 size on every run (a 2.16 GB model: +1.1 GB a run) and which keeps what it took
CHECK = SessionSettings(enable_cpu_mem_arena=False)


def create_session(
    model: str | Path | bytes,
    *,
    providers: Sequence[ProviderSpec | str] | None = None,
    settings: SessionSettings | None = None,
    qdq_as_float: bool = False,
    external_initializers: tuple[Sequence[str], Sequence[Any]] | None = None,
    external_data_folder: Path | None = None,
    optimized_output: Path | None = None,
    error: type[PipelineError] = BundleError,
    what: str | None = None,
) -> Any:
    """Open an ``onnxruntime.InferenceSession``; onnxruntime's failure becomes one line of ``error``.

    - ``providers``: names or ``(name, options)`` in order of preference (default: the CPU provider);
      the ones this onnxruntime lacks are dropped with a warning.
    - ``settings``: session options (default ``SessionSettings()``: level "all", onnxruntime's threads).
    - ``qdq_as_float``: keep every QuantizeLinear/DequantizeLinear as written and run the graph
      unoptimised, so the session is the float simulation of the integer pipeline, not onnxruntime's int8
      kernels (what the Vitis AI quantizer and the per-layer comparisons measure).
    - ``external_initializers``: (names, arrays) handed to onnxruntime in memory for a model whose
      large initializers are placeholders (``onnxfile.weightless``); the arrays must stay alive.
      onnxruntime copies them: a ``ModelParts.session_source`` refers to the weights still in their file.
    - ``external_data_folder``: where the external-data locations of a model given as bytes resolve
      (onnxruntime maps those files itself, without a private copy).
    - ``optimized_output``: write the optimised graph there (ORT format when its suffix is ``.ort``).
    """
    import onnxruntime as ort

    settings = settings or SessionSettings()
    options = settings.build()
    if qdq_as_float:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        # No graph optimisation: with the QDQ kept, onnxruntime's constant folding would turn every
        # DequantizeLinear of a weight into a float32 copy of it (a second float model in memory, for
        # each session); the float simulation computes the same values at run time.
        options.graph_optimization_level = optimization_level("disabled")
    if external_initializers is not None:
        names, arrays = external_initializers
        if names:
            options.add_external_initializers(list(names), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
    if external_data_folder is not None:
        folder_key = "session.model_external_initializers_file_folder_path"
        options.add_session_config_entry(folder_key, str(external_data_folder))
    if optimized_output is not None:
        options.optimized_model_filepath = str(optimized_output)
        if Path(optimized_output).suffix == ".ort":
            options.add_session_config_entry("session.save_model_format", "ORT")
    requested = parse_providers(providers) if providers is not None else [(CPU_PROVIDER, {})]
    chosen = select_providers(requested, ort.get_available_providers())
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(
            source,
            sess_options=options,
            providers=[name for name, _ in chosen],
            provider_options=[opts for _, opts in chosen],
        )
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        name = what or ("the model" if isinstance(model, bytes) else Path(model).name)
        raise error(f"onnxruntime cannot load {name}: {first_line(exc)}") from None
