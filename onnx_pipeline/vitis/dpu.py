"""The DPU a Vitis AI bundle targets, as read from the ``[dpu]`` table of a hardware profile.

Limits come from AMD's UG1414 "Currently Supported Operators" table (one column per DPU
configuration); each profile cites its sources. ``targets.py`` calls :func:`parse_dpu_table`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_pipeline.errors import TargetError

#: the ONNX Runtime Vitis AI execution provider flow (VOE) and the classic XIR compiler flow
FLOWS = ("vitis-ai-ep", "vai_c_xir")
ARCH_JSON_TEMPLATE = "/opt/vitis_ai/compiler/arch/{family}/{board}/arch.json"


@dataclass(frozen=True)
class DpuSpec:
    """One DPU configuration on one board: names, flow, intrinsic parameters and operator limits.

    Ranges are inclusive ``(min, max)`` pairs. ``conv_kernel_area_limit`` is the DPUCV2DX8G rule
    ``256 * kernel_h * kernel_w <= limit`` (13760 in UG1414); ``None`` where the DPU has no such rule.
    """

    name: str  # full DPU target name, e.g. "DPUCZDX8G_ISA1_B4096"
    family: str  # e.g. "DPUCZDX8G": the folder under /opt/vitis_ai/compiler/arch
    board: str  # e.g. "ZCU102": the folder under arch/<family>/
    flow: str  # "vitis-ai-ep" or "vai_c_xir"
    channel_parallel: int
    bank_depth: int
    arch_json: str
    conv_kernel: tuple[int, int] = (1, 16)
    conv_stride: tuple[int, int] = (1, 8)
    conv_kernel_area_limit: int | None = None
    depthwise_kernel: tuple[int, int] = (1, 16)
    depthwise_stride: tuple[int, int] = (1, 8)
    pool_kernel: tuple[int, int] = (1, 8)
    pool_stride: tuple[int, int] = (1, 8)
    avgpool_kernel: tuple[int, int] = (1, 8)
    #: vaip_config.json on the board image (referenced by provider_options.json, never shipped)
    vaip_config: str = ""
    vitis_ai_version: str = "3.5"
    board_description: str = ""
    #: fidelity floors of this DPU's bundle; ``None`` defers to the profile's ``[fidelity.int8]``
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    sources: tuple[str, ...] = field(default=())

    @property
    def arch_json_path(self) -> str:
        """Where the board's arch.json lives inside the Vitis AI docker image."""
        return self.arch_json


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


def parse_dpu_table(table: dict[str, Any], source: Path) -> DpuSpec:
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
