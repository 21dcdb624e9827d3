"""``vaiml``: a bundle for AMD Versal AI Edge Gen 2 (VEK385), the Vitis AI NPU flow (VAIML), per ``[npu]``.

Files: ``model_fp32.onnx`` (static batch 1, opset 17), the VINT8 QDQ model (``model_vint8_qdq.onnx``;
for BF16 the float model is the deployable one), ``quant_params.json``, the NPU operator report
(JSON and Markdown), ``fidelity.json``, ``vitisai_config.json`` (passes ``init`` and
``vaiml_partition`` with its ``vaiml_config``), ``provider_options.json`` (config_file, cache_dir,
cache_key, target "VAIML"), ``compile_model.py``, ``run_npu.py``, ``quark_requantize.py``,
calibration samples, ``preprocess.json``, ``labels.json`` and ``AMD_NPU_README.md``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from onnx_pipeline.artifacts._amd import CACHE_DIR
from onnx_pipeline.artifacts._npu_flow import Flow, model_file
from onnx_pipeline.artifacts._npu_flow import build as build_flow
from onnx_pipeline.artifacts.base import BuilderSpec
from onnx_pipeline.targets import NpuSpec

SPEC = BuilderSpec("vaiml", "int8", order=60, requires=("npu",), calibrated=True, rewrites_opset=True, default_rank=20)


def vitisai_config(spec: NpuSpec, config: str) -> dict[str, Any]:
    """The compiler config AMD's VEK385 examples use: passes init and vaiml_partition, target VAIML."""
    vaiml: dict[str, Any] = {"device": spec.device, "keep_outputs": True, "optimize_level": spec.optimize_level}
    if spec.threshold_gops_percent is not None:
        vaiml["threshold_gops_percent"] = spec.threshold_gops_percent
    vaiml["logging_level"] = "info"
    if config == "BF16":
        vaiml["enable_f32_to_bf16_conversion"] = True
    return {
        "passes": [
            {"name": "init", "plugin": "vaip-pass_init"},
            {"name": "vaiml_partition", "plugin": "vaip-pass_vaiml_partition", "vaiml_config": vaiml},
        ],
        "target": spec.target or "VAIML",
        "targets": [{"name": spec.target or "VAIML", "pass": ["init", "vaiml_partition"]}],
    }


def provider_extra(spec: NpuSpec, config: str) -> dict[str, Any]:
    return {"target": spec.target or "VAIML"}


def commands(spec: NpuSpec, config: str) -> str:
    model = model_file(config)
    return f"""On an x86 Linux host, inside AMD's Vitis AI docker for Versal AI Edge Series Gen 2 ({spec.toolchain}),
with this folder mounted (compilation happens when the session is created):

    python3 compile_model.py            # compiles {model}: {CACHE_DIR}/<cache_key>/ (and its .rai)
    cat {CACHE_DIR}/*/final-vaiml-pass-summary.txt   # the compiler's NPU/CPU partition

Copy this folder, with {CACHE_DIR}/, to the VEK385 board running AMD's image, then:

    python3 run_npu.py image.jpg --top-k 5

`run_npu.py` loads the cached compilation (same cache_key) and fails if the Vitis AI EP is not active.
Outside the docker `compile_model.py` exits with status 2 and says AMD's toolchain is missing."""


#: where compile_model.py can run
TOOLCHAIN_WHERE = (
    "run it inside AMD's Vitis AI docker for Versal AI Edge Series Gen 2 (x86 host) or on the VEK385 board image"
)
FLOW = Flow(SPEC.kind, "Vitis AI NPU (VAIML)", TOOLCHAIN_WHERE, vitisai_config, provider_extra, commands)
#: the builder: the shared NPU flow with this module's differences
build = partial(build_flow, flow=FLOW)
