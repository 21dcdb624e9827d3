"""The Vitis AI bundle builder: everything in ``bundles/vitis-ai-<board>/`` except its manifest.json.

``onnx_pipeline.steps.bundle`` calls :func:`write_vitis_artifacts` for a target whose ``artifacts``
list "vitis-ai", then writes the manifest from the returned :class:`VitisArtifacts`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_pipeline.errors import BundleError
from onnx_pipeline.files import sha256_file, write_json

if TYPE_CHECKING:
    from onnx_pipeline.targets import HardwareTarget

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_STORED_SAMPLES = 64
MODEL_FP32 = "model_fp32.onnx"
MODEL_QDQ = "model_xint8_qdq.onnx"


@dataclass(frozen=True)
class VitisArtifacts:
    """What the Vitis AI builder wrote and measured (the bundle step turns it into manifest entries)."""

    files: tuple[str, ...]  # paths relative to out_dir, sorted
    models: dict[str, str]  # role ("fp32", "xint8_qdq") → file
    fidelity: dict[str, Any]  # float vs power-of-two figures per output, thresholds, passed
    dpu_report: dict[str, Any]  # summary: dpu, board, counts, CPU nodes with their rules
    quant_params: dict[str, Any]  # summary: tensor counts, position range, adjustments made
    provider: dict[str, Any]  # execution provider name and options, as in provider_options.json
    dpu: dict[str, Any]  # DPU name, family, board, flow, arch.json
    synthetic_calibration: bool
    calibration_samples: int
    rewrites: tuple[str, ...]  # what the opset-17/static-batch rewrite changed
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _thresholds(target: Any) -> Any:
    from onnx_pipeline.targets import FidelityThresholds

    fidelity = getattr(target, "fidelity", None) or {}
    base = fidelity.get("int8") if isinstance(fidelity, Mapping) else None
    if base is None:
        base = FidelityThresholds(min_cosine=0.99, min_sqnr_db=15.0, min_top1_agreement=0.9, min_top5_agreement=0.95)
    spec = target.dpu
    overrides = {
        k: getattr(spec, k) for k in ("min_cosine", "min_top1_agreement") if getattr(spec, k, None) is not None
    }
    return dataclasses.replace(base, **overrides)


def _render(template: str, **values: Any) -> str:
    return (TEMPLATES / template).read_text(encoding="utf-8").format(**values)


def _preprocessing(model_fp32: Path, given: Mapping[str, Any] | None) -> Any:
    if given is not None:
        return dict(given)
    manifest = model_fp32.parent / "manifest.json"
    if manifest.is_file():
        try:
            return json.loads(manifest.read_text(encoding="utf-8")).get("preprocessing")
        except (json.JSONDecodeError, OSError):
            return None
    return None


def write_vitis_artifacts(
    model_fp32: Path,
    out_dir: Path,
    target: HardwareTarget,
    calibration: np.ndarray,
    heldout: np.ndarray,
    labels: list[str] | None,
    synthetic_calibration: bool,
    *,
    preprocessing: Mapping[str, Any] | None = None,
) -> VitisArtifacts:
    """Build the Vitis AI bundle files for ``target.dpu`` in ``out_dir``; raise BundleError below thresholds.

    ``preprocessing`` is the run's ``PreprocessSpec.to_dict()``; by default it is read from the
    ``manifest.json`` beside ``model_fp32``.
    """
    from onnx_pipeline.bundling.fidelity import judge
    from onnx_pipeline.vitis.graph import check_model_file, load_parts, to_static_opset17, write_model
    from onnx_pipeline.vitis.quantize import check_xint8, quantize_xint8
    from onnx_pipeline.vitis.report import build_dpu_report

    spec = getattr(target, "dpu", None)
    if spec is None:
        raise BundleError(
            f"target '{getattr(target, 'name', target)}' has no [dpu] table: it cannot build a Vitis AI bundle"
        )
    if len(heldout) == 0:
        raise BundleError("no held-out samples for the fidelity check: give more images or allow synthetic data")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    # 1. the static, opset-17 fp32 model
    parts = load_parts(Path(model_fp32))
    rewrites = to_static_opset17(parts)
    fp32_path = out_dir / MODEL_FP32
    write_model(parts.skeleton, parts.weights, fp32_path)
    check_model_file(fp32_path)
    timings["prepare"] = time.perf_counter() - start

    # 2. the DPU operator report (on the float graph: the nodes the user wrote)
    report = build_dpu_report(parts.skeleton, spec)
    write_json(out_dir / "dpu_report.json", report.to_dict())
    (out_dir / "dpu_report.md").write_text(report.to_markdown(), encoding="utf-8")
    input_name = next(
        i.name for i in parts.skeleton.graph.input if i.name not in {t.name for t in parts.skeleton.graph.initializer}
    )

    # 3. quantize, with the fp32 reference outputs on the held-out inputs from the same session
    t1 = time.perf_counter()
    qdq_path = out_dir / MODEL_QDQ
    scratch = Path(tempfile.mkdtemp(prefix=".vitis-", dir=out_dir))
    try:
        result = quantize_xint8(parts, calibration, heldout, qdq_path, scratch_dir=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    del parts
    check_model_file(qdq_path)
    timings["quantize"] = time.perf_counter() - t1

    import onnx

    problems = check_xint8(onnx.load(str(qdq_path)))
    if problems:
        raise BundleError(f"the XINT8 model breaks {len(problems)} DPU rule(s), first: {problems[0]}")
    params = {name: p.to_dict() for name, p in sorted(result.params.items())}
    write_json(
        out_dir / "quant_params.json",
        {"schema": "onnx-pipeline/vitis-quant-params/1", "scheme": "power-of-two XINT8", "tensors": params},
    )

    # 4. fidelity of the power-of-two model against the float one, on the CPU
    t2 = time.perf_counter()
    fidelity = _fidelity(qdq_path, input_name, result, heldout, _thresholds(target), synthetic_calibration, judge)
    write_json(out_dir / "fidelity.json", fidelity)
    timings["fidelity"] = time.perf_counter() - t2

    # 5. calibration samples, preprocessing, labels, provider options, scripts and notes
    files_extra = _write_side_files(
        out_dir,
        spec,
        calibration,
        synthetic_calibration,
        labels,
        input_name,
        _preprocessing(Path(model_fp32), preprocessing),
        report,
        qdq_path,
    )
    timings["total"] = time.perf_counter() - start
    positions = [p.position for p in result.params.values()]
    artifacts = VitisArtifacts(
        files=tuple(sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())),
        models={"fp32": MODEL_FP32, "xint8_qdq": MODEL_QDQ},
        fidelity=fidelity,
        dpu_report=report.summary(),
        quant_params={
            "scheme": "power-of-two XINT8 (int8, symmetric, zero point 0, scale 2^-pos)",
            "activations": sum(p.kind == "activation" for p in result.params.values()),
            "weights": sum(p.kind == "weight" for p in result.params.values()),
            "biases": sum(p.kind == "bias" for p in result.params.values()),
            "position_range": [min(positions), max(positions)] if positions else [],
            "adjustments": list(result.adjustments),
            "quantizer_seconds": result.seconds,
        },
        provider=files_extra["provider"],
        dpu={
            "name": spec.name,
            "family": spec.family,
            "board": spec.board,
            "flow": spec.flow,
            "arch_json": spec.arch_json,
        },
        synthetic_calibration=synthetic_calibration,
        calibration_samples=result.calibration_samples,
        rewrites=tuple(rewrites),
        seconds=timings,
    )
    if not fidelity["passed"]:
        raise BundleError(
            f"the power-of-two model falls short of the fidelity thresholds: {'; '.join(fidelity['failures'])}",
            result=artifacts,
        )
    return artifacts


def _fidelity(
    qdq_path: Path, input_name: str, result: Any, heldout: np.ndarray, thresholds: Any, synthetic: bool, judge: Any
) -> dict[str, Any]:
    from onnx_pipeline.vitis.quantize import _session

    session = _session(qdq_path, qdq_as_float=True)
    names = list(result.output_names)
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for sample in np.asarray(heldout, dtype=np.float32):
        for n, v in zip(names, session.run(names, {input_name: sample[None]}), strict=True):
            outs[n].append(v)
    test = [np.concatenate(outs[n]) for n in names]
    reference = [result.reference_outputs[n] for n in names]
    data = "synthetic" if synthetic else f"{len(heldout)} held-out samples"
    verdict = judge(MODEL_QDQ, "int8", names, reference, test, thresholds, data)
    return verdict.to_dict()


def _write_side_files(
    out_dir: Path,
    spec: Any,
    calibration: np.ndarray,
    synthetic: bool,
    labels: list[str] | None,
    input_name: str,
    preprocessing: Any,
    report: Any,
    qdq_path: Path,
) -> dict[str, Any]:
    calib_dir = out_dir / "calibration"
    calib_dir.mkdir(exist_ok=True)
    stored = np.asarray(calibration[:MAX_STORED_SAMPLES], dtype=np.float32)
    np.save(calib_dir / "samples.npy", stored)
    write_json(
        calib_dir / "manifest.json",
        {
            "schema": "onnx-pipeline/vitis-calibration/1",
            "synthetic": synthetic,
            "note": "SYNTHETIC calibration data: positions are not representative of real inputs" if synthetic else "",
            "samples_used": len(calibration),
            "samples_stored": len(stored),
            "file": "samples.npy",
            "shape": list(stored.shape),
            "dtype": "float32",
            "layout": "NCHW, preprocessed (see ../preprocess.json)",
            "input_name": input_name,
            "sha256": sha256_file(calib_dir / "samples.npy"),
        },
    )
    write_json(out_dir / "preprocess.json", {"input_name": input_name, "preprocessing": preprocessing})
    if labels:
        write_json(out_dir / "labels.json", list(labels))
    cache_key = sha256_file(qdq_path)
    vaip = spec.vaip_config or "/etc/vaip_config.json"
    provider = {
        "provider": "VitisAIExecutionProvider",
        "model": MODEL_QDQ,
        "provider_options": {"config_file": vaip, "cache_dir": "/tmp/vaip/.cache", "cache_key": cache_key},
        "legacy_option_names": {"cacheDir": "/tmp/vaip/.cache", "cacheKey": cache_key},
        "note": (
            "config_file is the board image's vaip_config.json (referenced, not shipped); "
            f"flow for {spec.board}: {spec.flow}"
        ),
        "sources": [
            "https://docs.amd.com/r/en-US/ug1354-xilinx-ai-sdk/Runtime-Options (Vitis AI 3.5: config_file required)",
            "https://github.com/microsoft/onnxruntime/pull/24739 (cache_dir, cache_key option names)",
        ],
    }
    write_json(out_dir / "provider_options.json", provider)
    values = {"board": spec.board, "dpu": spec.name, "input_name": input_name}
    (out_dir / "run_on_board.py").write_text(_render("run_on_board.py.tmpl", **values), encoding="utf-8")
    (out_dir / "quark_requantize.py").write_text(_render("quark_requantize.py.tmpl", **values), encoding="utf-8")
    summary = report.summary()
    cpu = "; ".join(f"`{n['name']}` ({n['op_type']}: {n['rule']})" for n in summary["cpu_nodes"]) or "none"
    notes = _render(
        "NOTES.md.tmpl",
        board=spec.board,
        board_lower=spec.board.lower(),
        dpu=spec.name,
        flow=spec.flow,
        vitis_ai_version=spec.vitis_ai_version,
        vaip_config=vaip,
        arch_json=spec.arch_json,
        model_name="model",
        dpu_summary=f"{summary['on_dpu']} of {summary['nodes']} nodes on the DPU; on the CPU: {cpu}.",
        sources="\n".join(f"- {s}" for s in spec.sources) or "- UG1414 (Vitis AI User Guide)",
    )
    (out_dir / "VITIS_AI_NOTES.md").write_text(notes, encoding="utf-8")
    return {"provider": provider}
