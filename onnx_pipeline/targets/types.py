"""The typed form of a hardware target profile (``hardware/*.toml``); ``targets.profiles`` builds it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

Precision = Literal["fp32", "fp16", "int8"]
OptimizationLevel = Literal["disabled", "basic", "extended", "layout", "all"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
#: the one vocabulary of onnxruntime graph-optimization levels (profiles, manifests, session settings)
#: and onnxruntime's enum member for each; "layout" needs onnxruntime >= 1.22 (falls back to "all")
OPTIMIZATION_LEVELS: Mapping[str, str] = MappingProxyType(
    {
        "disabled": "ORT_DISABLE_ALL",
        "basic": "ORT_ENABLE_BASIC",
        "extended": "ORT_ENABLE_EXTENDED",
        "layout": "ORT_ENABLE_LAYOUT",
        "all": "ORT_ENABLE_ALL",
    }
)
#: spellings older manifests and other tools use
OPTIMIZATION_LEVEL_ALIASES: Mapping[str, str] = MappingProxyType(
    {"disable": "disabled", "none": "disabled", "enable_all": "all"}
)


def normalise_optimization_level(level: str) -> str | None:
    """The canonical name of ``level`` ("disable", "ORT_ENABLE_ALL", ... accepted), or None if unknown."""
    lowered = level.lower()
    lowered = OPTIMIZATION_LEVEL_ALIASES.get(lowered, lowered)
    for name, member in OPTIMIZATION_LEVELS.items():
        if lowered in (name, member.lower()):
            return name
    return None


QUANT_TYPES: tuple[str, ...] = ("int8", "uint8")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
#: the opset range onnx-pipeline can export (see config.PipelineConfig)
SUPPORTED_OPSETS = (13, 23)


#: optional profile tables, each parsed into the field of ``HardwareTarget`` of the same name
OPTIONAL_TABLES: tuple[str, ...] = ("quantization", "fp16", "triton", "torchserve", "dpu", "npu")


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


#: AMD's NPU flows: the Versal AI Edge Gen 2 VAIML compiler, and Ryzen AI's Vitis AI EP on XDNA laptops
NPU_FLOWS = ("vaiml", "ryzen-ai")
#: the AMD Quark configurations a flow takes (BF16: the float model, converted by the compiler)
NPU_QUANT_CONFIGS = ("XINT8", "VINT8", "A8W8", "A16W8", "BF16")


@dataclass(frozen=True)
class NpuSpec:
    """One AMD NPU flow on one device: the toolchain, the quantization it takes, its compiler options.

    ``quant_config`` is the configuration the bundle is built with; ``quant_configs`` the ones the
    flow accepts (copy the profile and change ``quant_config`` to build another). ``support_table``
    names the operator table of ``onnx_pipeline.vitis.npu_support`` the operator report uses.
    """

    flow: str  # "vaiml" or "ryzen-ai"
    device: str  # vaiml_config "device" (VAIML) or the NPU family (Ryzen AI: "strix", "phoenix")
    board: str
    architecture: str
    toolchain: str  # e.g. "Vitis AI 6.3", "Ryzen AI 1.5"
    quant_config: str
    quant_configs: tuple[str, ...]
    support_table: str
    optimize_level: int = 1
    #: VAIML: subgraphs below this share of the model's GOPs fall back to the CPU
    threshold_gops_percent: int | None = None
    #: VAIML: NPU subgraphs beyond this count fall back to the CPU
    max_npu_subgraphs: int | None = None
    #: Ryzen AI INT8: the NPU binary (.xclbin) under the Ryzen AI installation
    xclbin: str = ""
    #: provider option "target" (VAIML)
    target: str = ""
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    #: facts of this profile the sources found did not confirm
    unconfirmed: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()


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
class FallbackSpec:
    """Automatic fallback: how much of a lowered model may be kept in float32 to meet its thresholds."""

    #: most lowered layers kept in float, as a fraction of them (at least one when above 0; 0 turns it off)
    max_float_layers_fraction: float = 0.1


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
class TorchServeSpec:
    """How the TorchServe archive is served: ``config.properties`` and the handler's answer."""

    #: largest batch TorchServe forms for the model, and how long it waits to fill one
    batch_size: int = 8
    max_batch_delay_ms: int = 50
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120
    #: 0: the workers run on the CPU
    number_of_gpu: int = 0
    #: classes in each answer's ``top_k``
    top_k: int = 5
    #: loopback ports of the inference, management and metrics APIs
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082


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
    torchserve: TorchServeSpec | None = None
    dpu: DpuSpec | None = None
    npu: NpuSpec | None = None
    references: tuple[str, ...] = ()
    fallback: FallbackSpec = field(default_factory=FallbackSpec)

    def table(self, name: str) -> Any:
        """The parsed optional table ``name`` of the profile (``quantization``, ``dpu``, ...), or None."""
        return getattr(self, name, None) if name in OPTIONAL_TABLES else None

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


def _ort_option(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
