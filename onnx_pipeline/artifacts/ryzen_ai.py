"""``ryzen-ai``: a bundle for AMD Ryzen AI laptops (XDNA / XDNA2 NPUs), the Vitis AI EP flow, per ``[npu]``.

Files: ``model_fp32.onnx`` (static batch 1, opset 17), the QDQ model of the profile's configuration
(``model_xint8_qdq.onnx`` by default; A8W8/A16W8 as profile choices; for BF16 the float model),
``quant_params.json``, the NPU operator report, ``fidelity.json``, ``vitisai_config.json`` (the BF16
compile passes, where the NPU takes BF16), ``provider_options.json`` (cache_dir, cache_key, and the
INT8 ``xclbin`` or the BF16 ``config_file``), ``compile_model.py``, ``run_npu.py`` (fails unless the
EP report puts nodes on the NPU), ``quark_requantize.py``, calibration samples and ``AMD_NPU_README.md``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from onnx_pipeline.artifacts._amd import CACHE_DIR
from onnx_pipeline.artifacts._npu_flow import Flow, model_file
from onnx_pipeline.artifacts._npu_flow import build as build_flow
from onnx_pipeline.artifacts.base import BuilderSpec
from onnx_pipeline.targets import NpuSpec

SPEC = BuilderSpec(
    "ryzen-ai", "int8", order=60, requires=("npu",), calibrated=True, rewrites_opset=True, default_rank=20
)


def vitisai_config(spec: NpuSpec, config: str) -> dict[str, Any] | None:
    """Ryzen AI's BF16 compile config (passes init and vaiml_partition); None where the NPU takes no BF16."""
    if "BF16" not in spec.quant_configs:
        return None
    vaiml: dict[str, Any] = {"optimize_level": spec.optimize_level, "enable_f32_to_bf16_conversion": True}
    return {
        "passes": [
            {"name": "init", "plugin": "vaip-pass_init"},
            {"name": "vaiml_partition", "plugin": "vaip-pass_vaiml_partition", "vaiml_config": vaiml},
        ]
    }


def provider_extra(spec: NpuSpec, config: str) -> dict[str, Any]:
    """INT8 models name the NPU binary (xclbin); BF16 ones the config file (set by the caller)."""
    return {"xclbin": spec.xclbin} if config != "BF16" and spec.xclbin else {}


def commands(spec: NpuSpec, config: str) -> str:
    model = model_file(config)
    bf16 = ""
    if config != "BF16" and "BF16" in spec.quant_configs:
        bf16 = """

The BF16 alternative (the float model, converted by the compiler; vitisai_config.json holds its passes):

    python compile_model.py --model model_fp32.onnx --config-file vitisai_config.json --cache-dir .vaip_cache_bf16"""
    return f"""On the Ryzen AI laptop ({spec.board}), in the conda environment of the Ryzen AI installer
({spec.toolchain}; RYZEN_AI_INSTALLATION_PATH set by it), from this folder:

    python compile_model.py             # compiles {model} into {CACHE_DIR}\\<cache_key>\\
    type {CACHE_DIR}\\<cache_key>\\vitisai_ep_report.json   # the EP's CPU/NPU assignment
    python run_npu.py image.jpg --top-k 5

`run_npu.py` fails if the Vitis AI EP is not active or its report puts no node on the NPU. Elsewhere
`compile_model.py` exits with status 2 and says AMD's toolchain is missing.{bf16}"""


#: where compile_model.py can run
TOOLCHAIN_WHERE = (
    "run it on a Ryzen AI laptop in the Ryzen AI Software's conda environment (Windows) or its Linux build"
)
FLOW = Flow(SPEC.kind, "Ryzen AI (Vitis AI EP)", TOOLCHAIN_WHERE, vitisai_config, provider_extra, commands)
#: the builder: the shared NPU flow with this module's differences
build = partial(build_flow, flow=FLOW)
