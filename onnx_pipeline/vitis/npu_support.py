"""AMD's published NPU operator support tables, transcribed as data (one column per precision).

A "Y" in AMD's tables means "broad coverage for that operator and that quantization type ... some
specific configurations may not be fully supported": the operator report treats a listed operator
as NPU-capable and says so, and the compiler has the final word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from onnx_pipeline.errors import TargetError

VAIML_SOURCE = (
    "Vitis AI 2025.1_web documentation for Versal AI Edge Series Gen 2, 'Supported Operators' (BF16 and INT8 "
    "columns, and the 'Operator Shape Support Matrix'), https://vitisai.docs.amd.com/projects/gen2/en/latest/"
)
RYZEN_AI_SOURCE = (
    "Ryzen AI 1.5.0 documentation, 'Supported Operators' (BF16, A16W8, A8W8, XINT8 columns), "
    "https://ryzenai.docs.amd.com/en/latest/ops_support.html "
    "(github.com/amd/ryzen-ai-documentation docs/ops_support.rst)"
)

# Ryzen AI 1.5.0: op -> the columns (BF16, A16W8, A8W8, XINT8) marked "Y"
_RYZEN_AI = """
Abs B..X Add BAMX And B..X ArgMax B..X ArgMin B..X AveragePool BAMX BatchNormalization BAMX BitShift B..X
BitwiseAnd B..X BitwiseNot B..X BitwiseOr B..X BitwiseXor B..X Cast B..X Ceil B..X Celu ...X Clip .AMX
Concat BAMX Constant BAMX ConstantOfShape BAMX Conv BAMX ConvTranspose BAM. Cos .AM. CumSum B..X
DepthToSpace BAMX DequantizeLinear .AMX Div BAMX Einsum B... Elu .A.X Equal B..X Erf B..X Exp BA.. Expand BAMX
Flatten BAMX Floor B..X Gather B... GatherElements BA.. Gelu .AMX Gemm BAMX GlobalAveragePool BAMX
GlobalMaxPool .AMX Greater B..X GreaterOrEqual ...X GridSample B... GroupConv B... GroupNormalization .AMX
HardSigmoid ..M. HardSwish ..MX Identity BAMX InstanceNormalization BAMX LSTM B... LayerNormalization ...X
LeakyRelu .AMX Less B..X LessOrEqual ...X Log B..X MatMul BAMX Max BAMX MaxPool BAMX Min BAMX Mish ...X Mod B...
Mul BAMX Neg B..X Not B... Or B..X Pad BAMX Pow B..X QLinearConv .AM. QLinearMatMul ..M. QuantizeLinear .AM.
Range ...X Reciprocal BAMX ReduceMax BAMX ReduceMean B.MX ReduceMin B.MX ReduceSum B.MX Relu .AMX Reshape BAMX
Resize B.MX Round B..X STFT ...X ScatterND B... Shape BAMX Shrink ...X Sigmoid BAM. Sign B..X Sin BAM. Size B...
Slice BAMX Softmax .AMX Softsign ...X Split BA.. Sqrt BAMX Squeeze BAMX Sub BAMX Tanh BA.X ThresholdedRelu ...X
Tile B..X TopK .A.X Transpose BAMX Unsqueeze BAMX Upsample .AMX Where BA.X Xor B...
"""
# Vitis AI 2025.1_web (VAIML): op -> the columns (BF16, INT8) marked "Y"
_VAIML = """
Abs BI Add BI And BI ArgMax B. ArgMin B. AveragePool BI BatchNormalization BI BitShift BI BitwiseAnd BI
BitwiseNot BI BitwiseOr BI BitwiseXor BI Cast B. Ceil BI Clip BI Concat BI Constant BI ConstantOfShape BI Conv BI
ConvTranspose BI CumSum B. DepthToSpace BI Div BI Einsum B. Elu B. Equal BI Erf BI Exp B. Expand BI Flatten BI
Floor BI Gather BI GatherElements BI Gelu B. Gemm BI GlobalAveragePool BI Greater BI GridSample BI GroupConv BI
HardSigmoid BI HardSwish BI Identity BI InstanceNormalization BI LayerNormalization BI LeakyRelu BI Less BI Log BI
LSTM B. MatMul BI Max BI MaxPool BI Min BI Mish B. Mod BI Mul BI Neg BI Not BI Or BI Pad BI Pow BI Reciprocal BI
ReduceMax B. ReduceMean BI ReduceMin B. ReduceSum BI Relu BI Reshape BI Resize BI Round BI ScatterND BI Shape BI
Sigmoid BI Sign B. Sin BI Size BI Slice BI Softmax BI Split BI Sqrt BI Squeeze BI Sub BI Tanh BI Tile BI
Transpose BI Unsqueeze BI Upsample BI Where BI Xor B.
"""


@dataclass(frozen=True)
class SupportTable:
    """One published table: for each quantization configuration, the operators marked "Y"."""

    name: str
    source: str
    columns: Mapping[str, frozenset[str]]
    #: the VAIML compiler's per-operator shape limits apply (Conv2D kernel/stride, pooling windows)
    shape_rules: bool

    def supported(self, config: str) -> frozenset[str]:
        """Operators the NPU takes in ``config`` (XINT8, VINT8, A8W8, A16W8 or BF16)."""
        if config not in self.columns:
            raise TargetError(f"operator table {self.name} has no column for {config}: {', '.join(self.columns)}")
        return self.columns[config]


def _parse(text: str, letters: str) -> dict[str, frozenset[str]]:
    words = text.split()
    ops = dict(zip(words[::2], words[1::2], strict=True))
    return {letter: frozenset(op for op, flags in ops.items() if letter in flags) for letter in letters}


def _ryzen_ai() -> SupportTable:
    cols = _parse(_RYZEN_AI, "BAMX")
    return SupportTable(
        name="ryzen-ai-1.5",
        source=RYZEN_AI_SOURCE,
        columns=MappingProxyType({"BF16": cols["B"], "A16W8": cols["A"], "A8W8": cols["M"], "XINT8": cols["X"]}),
        shape_rules=False,
    )


def _vaiml() -> SupportTable:
    cols = _parse(_VAIML, "BI")
    int8 = cols["I"]
    return SupportTable(
        name="vaiml-2025.1",
        source=VAIML_SOURCE,
        # one INT8 column for the int8 QDQ configurations Quark writes for VAIML
        columns=MappingProxyType({"BF16": cols["B"], "VINT8": int8, "XINT8": int8, "A8W8": int8}),
        shape_rules=True,
    )


TABLES: Mapping[str, SupportTable] = MappingProxyType({t.name: t for t in (_ryzen_ai(), _vaiml())})


def support_table(name: str) -> SupportTable:
    """The table called ``name`` (``TargetError`` naming the known ones)."""
    if name not in TABLES:
        raise TargetError(f"unknown NPU operator table {name!r}: choose from {', '.join(TABLES)}")
    return TABLES[name]
