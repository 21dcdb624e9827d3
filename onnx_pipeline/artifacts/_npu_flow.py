"""What the AMD NPU builders (``vaiml``, ``ryzen-ai``) share: quantize, report, judge, write the hand-off files.

Not a builder itself (its name starts with ``_``): ``vaiml.py`` and ``ryzen_ai.py`` each describe
their flow as a :class:`Flow` and call :func:`build`. The profile's ``[npu]`` table says which
quantization configuration the bundle carries (``quant_config``): an integer QDQ model made by the
project's own quantizer, or for BF16 the float model the compiler converts (judged through a CPU
simulation of bfloat16).
"""

from __future__ import annotations

import dataclasses
import shutil
import string
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.artifacts._amd import MODEL_FP32, TEMPLATES
from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, run_batches
from onnx_pipeline.bundling.fidelity import judge
from onnx_pipeline.errors import BundleError
from onnx_pipeline.files import to_jsonable, write_json
from onnx_pipeline.runtime.session import ONE_SHOT, create_session
from onnx_pipeline.targets import FidelityThresholds, NpuSpec


@dataclass(frozen=True)
class Flow:
    """How one AMD flow differs: its name, where its toolchain lives, how its config file reads."""

    kind: str
    title: str
    #: where compile_model.py can run ("inside the Vitis AI 6.3 docker on an x86 Linux host", ...)
    toolchain_where: str
    #: the vitisai_config.json of ``config`` for ``spec`` (None: the flow takes none for it)
    vitisai_config: Any
    #: extra provider options for ``config`` (e.g. target, xclbin)
    provider_extra: Any
    #: the exact commands for the README (Markdown)
    commands: Any


def thresholds(ctx: BuildContext, spec: NpuSpec) -> FidelityThresholds:
    """The profile's int8 thresholds with the NPU table's own floors where it sets them."""
    overrides = {k: getattr(spec, k) for k in ("min_cosine", "min_top1_agreement") if getattr(spec, k) is not None}
    return dataclasses.replace(ctx.thresholds("int8"), **overrides)


def model_file(config: str) -> str:
    """The bundle's deployable model for ``config``."""
    return MODEL_FP32 if config == "BF16" else f"model_{config.lower()}_qdq.onnx"


def judged_file(config: str) -> str:
    """The model the fidelity gate runs on the CPU (BF16: its simulation)."""
    return "model_bf16_sim.onnx" if config == "BF16" else model_file(config)


def build(ctx: BuildContext, flow: Flow) -> ArtifactResult:
    """Build the bundle files of ``flow`` for the profile's ``[npu]`` table."""
    from onnx_pipeline.vitis.graph import check_model_file, load_parts, to_static_opset17, write_model
    from onnx_pipeline.vitis.npu_report import build_npu_report, cpu_only_reasons

    spec = ctx.target.npu
    assert spec is not None and ctx.data.calibration is not None
    config = spec.quant_config
    reasons = cpu_only_reasons(ctx.model)
    if reasons:
        report = build_npu_report(ctx.model, spec, config)
        raise BundleError(f"{flow.title}: the whole model would run on the CPU ({reasons[0]})", result=report.to_dict())
    timings: dict[str, float] = {}
    start = time.perf_counter()
    parts = load_parts(ctx.model_path)
    rewrites = to_static_opset17(parts)
    write_model(parts.skeleton, parts.weights, ctx.out / MODEL_FP32)
    check_model_file(ctx.out / MODEL_FP32)
    timings["prepare"] = round(time.perf_counter() - start, 3)
    report = build_npu_report(parts.skeleton, spec, config)
    write_json(ctx.out / "npu_report.json", report.to_dict())
    from onnx_pipeline.vitis.npu_support import support_table

    (ctx.out / "npu_report.md").write_text(report.to_markdown(support_table(spec.support_table).source), "utf-8")
    initializers = {t.name for t in parts.skeleton.graph.initializer}
    input_name = next(i.name for i in parts.skeleton.graph.input if i.name not in initializers)
    result, quant_summary = _quantize(ctx, parts, config, timings)
    del parts
    fidelity = _float_fidelity(ctx, spec, config, result)
    write_json(ctx.out / "fidelity.json", fidelity)
    provider = _write_side_files(ctx, spec, flow, input_name, report)
    precision = "bf16" if config == "BF16" else "int8"
    model = ctx.check(judged_file(config), flow.kind, precision, thresholds=thresholds(ctx, spec))
    section = {
        "models": {"fp32": MODEL_FP32, "deploy": model_file(config), "judged": judged_file(config)},
        "npu": {
            "flow": spec.flow,
            "board": spec.board,
            "device": spec.device,
            "toolchain": spec.toolchain,
            "quant_config": config,
            "quant_configs": list(spec.quant_configs),
        },
        "npu_report": report.summary(),
        "quant_params": quant_summary,
        "provider": provider,
        "rewrites": list(rewrites),
        "fidelity_float_vs_quantized": fidelity,
        "unconfirmed": list(spec.unconfirmed),
    }
    if not fidelity["passed"]:
        raise BundleError(
            f"{flow.title} bundle: the {config} model falls short of the fidelity thresholds: "
            + "; ".join(fidelity["failures"]),
            result=section,
        )
    readme = (
        f"- `{model_file(config)}`: {config} model for {spec.board} ({flow.title}); see `AMD_NPU_README.md` "
        "for the exact compile and run commands, and `npu_report.md`",
    )
    return ArtifactResult(kind=flow.kind, models=(model,), section=section, timings=timings, readme=readme)


def _quantize(ctx: BuildContext, parts: Any, config: str, timings: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    """The QDQ model (or, for BF16, the bfloat16 simulation) and its summary."""
    from onnx_pipeline.vitis.graph import check_model_file, load_parts
    from onnx_pipeline.vitis.quantize import check_qdq, quantize
    from onnx_pipeline.vitis.scheme import scheme

    assert ctx.data.calibration is not None
    start = time.perf_counter()
    if config == "BF16":
        return _bf16(ctx, parts, timings)
    chosen = scheme(config)
    scratch = Path(tempfile.mkdtemp(prefix=".npu-", dir=ctx.scratch))
    try:
        result = quantize(
            parts,
            ctx.data.calibration,
            ctx.data.heldout,
            ctx.out / model_file(config),
            scheme=chosen,
            scratch_dir=scratch,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parts.release()  # the run's float pages the quantizer read leave this process
    check_model_file(ctx.out / model_file(config))
    timings["quantize"] = round(time.perf_counter() - start, 3)
    problems = check_qdq(load_parts(ctx.out / model_file(config)), chosen)  # its weights mapped, not copied
    if problems:
        raise BundleError(f"the {config} model breaks {len(problems)} rule(s) of its format, first: {problems[0]}")
    params = {name: p.to_dict() for name, p in sorted(result.params.items())}
    write_json(
        ctx.out / "quant_params.json",
        {"schema": "onnx-pipeline/vitis-quant-params/1", "scheme": config, "tensors": params},
    )
    scales = [p.scale for p in result.params.values() if p.kind == "activation"]
    summary = {
        "scheme": f"{config} ({chosen.description})",
        "activation_dtype": chosen.activation_dtype,
        "activations": sum(p.kind == "activation" for p in result.params.values()),
        "weights": sum(p.kind == "weight" for p in result.params.values()),
        "biases": sum(p.kind == "bias" for p in result.params.values()),
        "activation_scale_range": [min(scales), max(scales)] if scales else [],
        "adjustments": list(result.adjustments)[:200],
        "quantizer_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "calibration_samples": result.calibration_samples,
    }
    return result, summary


@dataclass(frozen=True)
class _Bf16Result:
    output_names: tuple[str, ...]
    reference_outputs: dict[str, np.ndarray]


def _bf16(ctx: BuildContext, parts: Any, timings: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    """BF16: the deployable model is the float one; the judged one simulates the conversion."""
    from onnx_pipeline.vitis.bf16 import to_bf16_simulation
    from onnx_pipeline.vitis.graph import write_model

    start = time.perf_counter()
    names = tuple(o.name for o in parts.skeleton.graph.output)
    session = create_session(ctx.out / MODEL_FP32)
    reference = run_batches(session, np.asarray(ctx.data.heldout, dtype=np.float32))
    del session
    weights = to_bf16_simulation(parts)
    write_model(parts.skeleton, weights, ctx.out / judged_file("BF16"))
    timings["bf16_simulation"] = round(time.perf_counter() - start, 3)
    write_json(
        ctx.out / "quant_params.json", {"schema": "onnx-pipeline/vitis-quant-params/1", "scheme": "BF16", "tensors": {}}
    )
    summary = {"scheme": "BF16 (the compiler converts the float model; weights and activations rounded to bfloat16)"}
    return _Bf16Result(names, dict(zip(names, reference, strict=True))), summary


def _float_fidelity(ctx: BuildContext, spec: NpuSpec, config: str, result: Any) -> dict[str, Any]:
    """The quantized model (QDQ kept as float arithmetic) against the static fp32 model, per sample."""
    session = create_session(ctx.out / judged_file(config), qdq_as_float=True, settings=ONE_SHOT)
    names = list(result.output_names)
    test = run_batches(session, np.asarray(ctx.data.heldout, dtype=np.float32))
    reference = [result.reference_outputs[n] for n in names]
    precision = "bf16" if config == "BF16" else "int8"
    verdict = judge(judged_file(config), precision, names, reference, test, thresholds(ctx, spec), ctx.data.description)
    return to_jsonable(verdict)  # type: ignore[no-any-return]


def render(template: str, **values: Any) -> str:
    """A bundle file from ``vitis/templates`` (``$name`` placeholders)."""
    return string.Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(**values)


def _write_side_files(ctx: BuildContext, spec: NpuSpec, flow: Flow, input_name: str, report: Any) -> dict[str, Any]:
    from onnx_pipeline.artifacts._npu_files import write_hand_off

    return write_hand_off(ctx, spec, flow, input_name, report)
