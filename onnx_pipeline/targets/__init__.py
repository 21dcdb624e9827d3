"""Hardware targets: one TOML profile per target in ``hardware/``, validated into a frozen ``HardwareTarget``.

Steps read a target's fields and its artifact kinds; nothing branches on a target's name.
"""

from onnx_pipeline.targets.profiles import SAFE_NAME, hardware_dirs, list_targets, load_target
from onnx_pipeline.targets.types import (
    OPTIMIZATION_LEVELS,
    PRECISIONS,
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
    TorchServeSpec,
    TritonSpec,
    normalise_optimization_level,
)

__all__ = [
    "OPTIMIZATION_LEVELS",
    "PRECISIONS",
    "SAFE_NAME",
    "DpuSpec",
    "ExecutionProvider",
    "FallbackSpec",
    "FidelityThresholds",
    "Fp16Spec",
    "HardwareTarget",
    "NpuSpec",
    "OpsetRange",
    "QuantizationSpec",
    "SessionSpec",
    "TorchServeSpec",
    "TritonSpec",
    "hardware_dirs",
    "list_targets",
    "load_target",
    "normalise_optimization_level",
]
