"""``vitis-ai``: a bundle for AMD/Xilinx DPUs (the Vitis AI DPU flow), for the profile's ``[dpu]``.

Files: ``model_fp32.onnx`` (static batch 1, opset 17; its weights in ``model_fp32.onnx.data`` when the
model is over 2 GiB), ``model_xint8_qdq.onnx`` (power-of-two XINT8 QDQ, one file when it fits),
``quant_params.json``, the DPU operator report (JSON and Markdown), ``fidelity.json`` (float vs power-of-two),
calibration samples, ``preprocess.json``, ``labels.json``, ``provider_options.json``,
``run_on_board.py``, ``quark_requantize.py`` and ``VITIS_AI_NOTES.md``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.artifacts._amd import CACHE_DIR, MODEL_FP32, TEMPLATES, write_calibration
from onnx_pipeline.artifacts._fallback import LoweredModel, sensitivity_and_fallback
from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, run_batches
from onnx_pipeline.bundling.fidelity import judge
from onnx_pipeline.errors import BundleError
from onnx_pipeline.files import sha256_file, to_jsonable, write_json
from onnx_pipeline.onnxfile import load_parts
from onnx_pipeline.runtime.session import ONE_SHOT, create_session
from onnx_pipeline.targets import DpuSpec, FidelityThresholds

SPEC = BuilderSpec(
    "vitis-ai", "int8", order=60, requires=("dpu",), calibrated=True, rewrites_opset=True, default_rank=20
)

MODEL_QDQ = "model_xint8_qdq.onnx"


def thresholds(ctx: BuildContext, spec: DpuSpec) -> FidelityThresholds:
    """The profile's int8 thresholds with the DPU's own floors where it sets them."""
    overrides = {k: getattr(spec, k) for k in ("min_cosine", "min_top1_agreement") if getattr(spec, k) is not None}
    return dataclasses.replace(ctx.thresholds("int8"), **overrides)


def build(ctx: BuildContext) -> ArtifactResult:
    import onnx

    from onnx_pipeline.vitis.dpu_report import build_dpu_report, fallback_cost
    from onnx_pipeline.vitis.graph import check_model_file, to_static_opset17, write_model

    spec = ctx.target.dpu
    assert spec is not None and ctx.data.calibration is not None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    parts = ctx.source.copy()  # the run's model as stored (its graph copied, its weights shared)
    rewrites = to_static_opset17(parts)
    # One file when it fits, else the weights in model_fp32.onnx.data beside it.
    write_model(parts.skeleton, parts.weights, ctx.out / MODEL_FP32)
    check_model_file(ctx.out / MODEL_FP32)
    parts.release()
    timings["prepare"] = round(time.perf_counter() - start, 3)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(parts.skeleton)  # the fp32 graph: the quantizer rewrites ``parts`` in place
    initializers = {t.name for t in skeleton.graph.initializer}
    input_name = next(i.name for i in skeleton.graph.input if i.name not in initializers)
    result, quant_summary = _quantize(ctx, parts, timings)
    del parts  # its int8 weights are in the file now: not kept beside the sessions that judge it
    # Judged like every bundle model: against the run's fp32 reference, on the plain CPU session
    # ``verify BUNDLE`` re-runs, with the DPU's thresholds.
    model = ctx.check(MODEL_QDQ, SPEC.kind, SPEC.precision, thresholds=thresholds(ctx, spec))
    lowered = LoweredModel(
        MODEL_QDQ, SPEC.kind, SPEC.precision, load_parts(ctx.out / MODEL_FP32), thresholds(ctx, spec)
    )
    repair = sensitivity_and_fallback(ctx, lowered, model)
    timings.update(repair.timings)
    report = build_dpu_report(skeleton, spec, kept_in_float=repair.kept)
    write_json(ctx.out / "dpu_report.json", report.to_dict())
    (ctx.out / "dpu_report.md").write_text(report.to_markdown(), encoding="utf-8")
    float_fidelity = _float_fidelity(ctx, spec, input_name, result)
    write_json(ctx.out / "fidelity.json", float_fidelity)
    provider = _write_side_files(ctx, spec, input_name, report)
    section = {
        "models": {"fp32": MODEL_FP32, "xint8_qdq": MODEL_QDQ},
        "dpu": {
            "name": spec.name,
            "family": spec.family,
            "board": spec.board,
            "flow": spec.flow,
            "arch_json": spec.arch_json,
        },
        "dpu_report": report.summary(),
        "quant_params": quant_summary,
        "provider": provider,
        "rewrites": list(rewrites),
        "fidelity_float_vs_xint8": float_fidelity,
        **repair.section,
    }
    if repair.kept:
        section["fallback_cost"] = fallback_cost(skeleton, build_dpu_report(skeleton, spec), report)
    if not float_fidelity["passed"]:
        raise BundleError(
            "Vitis AI bundle: the power-of-two model falls short of the fidelity thresholds: "
            + "; ".join(float_fidelity["failures"]),
            result=section,
        )
    kept = f"; {len(repair.kept)} layer(s) kept in float32 run on the CPU" if repair.kept else ""
    return ArtifactResult(
        kind=SPEC.kind,
        models=(repair.model,),
        section=section,
        timings=timings,
        readme=(
            f"- `{MODEL_QDQ}`: power-of-two XINT8 QDQ for {spec.name} ({spec.board}); `{MODEL_FP32}`: its float "
            f"source (static batch 1, opset 17); see `VITIS_AI_NOTES.md` and `dpu_report.md`{kept}",
        ),
    )


def _quantize(ctx: BuildContext, parts: Any, timings: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    from onnx_pipeline.vitis.graph import check_model_file
    from onnx_pipeline.vitis.quantize import check_xint8, quantize_xint8

    assert ctx.data.calibration is not None
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=".vitis-", dir=ctx.scratch))
    try:
        result = quantize_xint8(parts, ctx.data.calibration, ctx.data.heldout, ctx.out / MODEL_QDQ, scratch_dir=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parts.release()  # the run's float pages the quantizer read (shared with ctx.source) leave this process
    check_model_file(ctx.out / MODEL_QDQ)
    timings["quantize"] = round(time.perf_counter() - start, 3)
    problems = check_xint8(load_parts(ctx.out / MODEL_QDQ))  # its weights mapped, not copied
    if problems:
        raise BundleError(f"the XINT8 model breaks {len(problems)} DPU rule(s), first: {problems[0]}")
    params = {name: p.to_dict() for name, p in sorted(result.params.items())}
    write_json(
        ctx.out / "quant_params.json",
        {"schema": "onnx-pipeline/vitis-quant-params/1", "scheme": "power-of-two XINT8", "tensors": params},
    )
    positions = [p.position for p in result.params.values() if p.position is not None]
    summary = {
        "scheme": "power-of-two XINT8 (int8, symmetric, zero point 0, scale 2^-pos)",
        "activations": sum(p.kind == "activation" for p in result.params.values()),
        "weights": sum(p.kind == "weight" for p in result.params.values()),
        "biases": sum(p.kind == "bias" for p in result.params.values()),
        "position_range": [min(positions), max(positions)] if positions else [],
        "adjustments": list(result.adjustments),
        "quantizer_seconds": result.seconds,
        "calibration_samples": result.calibration_samples,
    }
    return result, summary


def _float_fidelity(ctx: BuildContext, spec: DpuSpec, input_name: str, result: Any) -> dict[str, Any]:
    """The power-of-two model (QDQ kept as float arithmetic) against the static fp32 model, per sample."""
    session = create_session(ctx.out / MODEL_QDQ, qdq_as_float=True, settings=ONE_SHOT)  # a few runs only
    names = list(result.output_names)
    test = run_batches(session, np.asarray(ctx.data.heldout, dtype=np.float32))
    reference = [result.reference_outputs[n] for n in names]
    verdict = judge(MODEL_QDQ, "int8", names, reference, test, thresholds(ctx, spec), ctx.data.description)
    return to_jsonable(verdict)  # type: ignore[no-any-return]


def _render(template: str, **values: Any) -> str:
    return (TEMPLATES / template).read_text(encoding="utf-8").format(**values)


def _write_side_files(ctx: BuildContext, spec: DpuSpec, input_name: str, report: Any) -> dict[str, Any]:
    write_calibration(ctx, input_name, "positions")
    preprocessing = ctx.run.preprocessing.to_dict() if ctx.run.preprocessing else None
    write_json(ctx.out / "preprocess.json", {"input_name": input_name, "preprocessing": preprocessing})
    if ctx.run.labels:
        write_json(ctx.out / "labels.json", list(ctx.run.labels))
    provider = _provider_options(spec, sha256_file(ctx.out / MODEL_QDQ))
    write_json(ctx.out / "provider_options.json", provider)
    values = {"board": spec.board, "dpu": spec.name, "input_name": input_name, "cache_dir": CACHE_DIR}
    (ctx.out / "run_on_board.py").write_text(_render("run_on_board.py.tmpl", **values), encoding="utf-8")
    (ctx.out / "quark_requantize.py").write_text(_render("quark_requantize.py.tmpl", **values), encoding="utf-8")
    summary = report.summary()
    cpu = "; ".join(f"`{n['name']}` ({n['op_type']}: {n['rule']})" for n in summary["cpu_nodes"]) or "none"
    notes = _render(
        "NOTES.md.tmpl",
        board=spec.board,
        board_lower=spec.board.lower(),
        dpu=spec.name,
        flow=spec.flow,
        vitis_ai_version=spec.vitis_ai_version,
        vaip_config=provider["provider_options"]["config_file"],
        arch_json=spec.arch_json,
        model_name="model",
        dpu_summary=f"{summary['on_dpu']} of {summary['nodes']} nodes on the DPU; on the CPU: {cpu}.",
        sources="\n".join(f"- {s}" for s in spec.sources) or "- UG1414 (Vitis AI User Guide)",
    )
    (ctx.out / "VITIS_AI_NOTES.md").write_text(notes, encoding="utf-8")
    return provider


def _provider_options(spec: DpuSpec, cache_key: str) -> dict[str, Any]:
    vaip = spec.vaip_config or "/etc/vaip_config.json"
    return {
        "provider": "VitisAIExecutionProvider",
        "model": MODEL_QDQ,
        # A cache folder of the user's (relative: resolved by run_on_board.py beside the bundle), never a
        # shared, predictable /tmp path another user could prepare.
        "provider_options": {"config_file": vaip, "cache_dir": CACHE_DIR, "cache_key": cache_key},
        "legacy_option_names": {"cacheDir": CACHE_DIR, "cacheKey": cache_key},
        "note": (
            "config_file is the board image's vaip_config.json (referenced, not shipped); cache_dir is relative to "
            f"the bundle (run_on_board.py makes it private, mode 0700); flow for {spec.board}: {spec.flow}"
        ),
        "sources": [
            "https://docs.amd.com/r/en-US/ug1354-xilinx-ai-sdk/Runtime-Options (Vitis AI 3.5: config_file required)",
            "https://github.com/microsoft/onnxruntime/pull/24739 (cache_dir, cache_key option names)",
        ],
    }
