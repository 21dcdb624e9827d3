"""The quantization schemes AMD's toolchains take, as data: what differs between XINT8, VINT8, A8W8 and A16W8.

Each mirrors the AMD Quark ONNX configuration of the same name (``quark.onnx.quantization.config.
custom_config``, amd-quark 0.13: ``XINT8_CONFIG``, ``VINT8_CONFIG``, ``A8W8_CONFIG``, ``A16W8_CONFIG``,
what ``get_default_config(NAME)`` returns):

=========  ==============  ===========  ===========  ==========  =================================
scheme     activations     scale rule   calibration  bias        graph rules
=========  ==============  ===========  ===========  ==========  =================================
XINT8      int8 symmetric  power of 2   MinMSE       int8, pof2  DPU/NPU-CNN: Conv+ReLU fused, shifts
VINT8      int8 symmetric  power of 2   MinMSE       int8, pof2  VAIML: a QDQ pair on every tensor
A8W8       int8 symmetric  float        MinMax       int32       Conv+ReLU folded, Concat aligned
A16W8      int16 symmetric float        MinMax       int32       Conv+ReLU folded, Concat aligned
=========  ==============  ===========  ===========  ==========  =================================

Weights are int8, symmetric, per tensor, in [-127, 127] in every scheme; every zero point is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from onnx_pipeline.errors import TargetError

ScaleRule = Literal["pow2", "float"]
Calibration = Literal["minmse", "minmax"]


@dataclass(frozen=True)
class QuantScheme:
    """One AMD quantization configuration, as the quantizer and the checker read it."""

    name: str
    activation_bits: int
    scale_rule: ScaleRule
    calibration: Calibration
    #: bias as int32 with scale = input scale x weight scale (onnxruntime's and Quark's Int32Bias)
    int32_bias: bool
    #: Conv/Gemm and a following ReLU (LeakyReLU, ReLU6) share one QDQ pair, as the compiler fuses them
    fuse_activations: bool
    #: the DPU compiler's shift constraints (Quark's NPU-CNN refine: shift_cut, shift_bias, ...)
    dpu_shifts: bool
    description: str
    #: pooling/padding/slicing/layout outputs share their input's scale (Concat groups are always tied);
    #: off for A8W8/A16W8, whose Quark configurations align Concat only (AlignConcat, no AlignPool)
    tie_layout_ops: bool = True

    @property
    def activation_range(self) -> tuple[int, int]:
        """Integer range of an activation: [-128, 127] for int8, [-32768, 32767] for int16."""
        top = (1 << (self.activation_bits - 1)) - 1
        return -top - 1, top

    @property
    def activation_dtype(self) -> str:
        return f"int{self.activation_bits}"

    @property
    def qdq_domain(self) -> str:
        """int16 QDQ at opset 17 exists only as onnxruntime's com.microsoft operators."""
        return "com.microsoft" if self.activation_bits == 16 else ""


#: the four configurations, one row each in QuantScheme's field order
XINT8, VINT8, A8W8, A16W8 = (
    QuantScheme(*row)
    for row in (
        ("XINT8", 8, "pow2", "minmse", False, True, True,
         "int8 symmetric, power-of-two scales (MinMSE), DPU/NPU-CNN constraints"),
        ("VINT8", 8, "pow2", "minmse", False, False, False,
         "int8 symmetric, power-of-two scales (MinMSE), a QDQ pair on every tensor (VAIML)"),
        ("A8W8", 8, "float", "minmax", True, True, False,
         "int8 symmetric activations and weights, float scales (MinMax), int32 bias", False),
        ("A16W8", 16, "float", "minmax", True, True, False,
         "int16 symmetric activations, int8 weights, float scales (MinMax), int32 bias", False),
    )
)  # fmt: skip
SCHEMES = {s.name: s for s in (XINT8, VINT8, A8W8, A16W8)}
#: the float configuration: the compiler converts the fp32 model to bfloat16 itself
BF16 = "BF16"
CONFIGS: tuple[str, ...] = (*SCHEMES, BF16)


def scheme(name: str) -> QuantScheme:
    """The scheme called ``name`` (``TargetError`` for BF16 or an unknown name)."""
    if name not in SCHEMES:
        raise TargetError(f"unknown quantization scheme {name!r}: choose from {', '.join(SCHEMES)}")
    return SCHEMES[name]
