"""The hand-off files of an AMD NPU bundle: provider options, compiler config, scripts, samples, README.

Not a builder (its name starts with ``_``). Every path a script or the EP reads is relative to the
bundle: ``config_file`` and ``cache_dir`` are resolved beside the scripts at run time, and the cache
folder is made private (mode 0700); nothing points at a shared, predictable ``/tmp`` path.
"""

from __future__ import annotations

from typing import Any

from onnx_pipeline.artifacts._amd import CACHE_DIR, write_calibration
from onnx_pipeline.artifacts._npu_flow import Flow, model_file, render
from onnx_pipeline.artifacts.base import BuildContext
from onnx_pipeline.files import sha256_file, write_json
from onnx_pipeline.targets import NpuSpec

_QUARK_TWEAKS = {
    # AMD's VEK385 tutorials (resnet50_quark, mixed_precision): int8 biases, NPU CNN settings
    "VINT8": (
        '    config.extra_options["Int32Bias"] = False\n    config.enable_npu_cnn = True',
        ", with Int32Bias False and enable_npu_cnn as AMD's VEK385 tutorials set them",
    ),
    # Ryzen AI: BF16 QDQ converted to Cast for the VAIML compiler
    "BF16": (
        '    config.extra_options["BF16QDQToCast"] = True',
        ", with BF16QDQToCast as Ryzen AI's BF16 flow sets it",
    ),
}


def write_hand_off(ctx: BuildContext, spec: NpuSpec, flow: Flow, input_name: str, report: Any) -> dict[str, Any]:
    """Write every hand-off file; returns the provider options recorded in the manifest."""
    config = spec.quant_config
    write_calibration(ctx, input_name, "scales")
    preprocessing = ctx.run.preprocessing.to_dict() if ctx.run.preprocessing else None
    write_json(ctx.out / "preprocess.json", {"input_name": input_name, "preprocessing": preprocessing})
    if ctx.run.labels:
        write_json(ctx.out / "labels.json", list(ctx.run.labels))
    vitisai_config = flow.vitisai_config(spec, config)
    if vitisai_config is not None:
        write_json(ctx.out / "vitisai_config.json", vitisai_config)
    provider = provider_options(spec, flow, config, sha256_file(ctx.out / model_file(config)))
    write_json(ctx.out / "provider_options.json", provider)
    values = _template_values(spec, flow, input_name)
    (ctx.out / "compile_model.py").write_text(render("npu_compile.py.tmpl", **values), encoding="utf-8")
    (ctx.out / "run_npu.py").write_text(render("npu_run.py.tmpl", **values), encoding="utf-8")
    (ctx.out / "quark_requantize.py").write_text(_quark_script(spec, flow, values), encoding="utf-8")
    _write_readme(ctx, spec, flow, values, report, vitisai_config is not None)
    return provider


def provider_options(spec: NpuSpec, flow: Flow, config: str, cache_key: str) -> dict[str, Any]:
    """provider_options.json: options for the VitisAIExecutionProvider, paths relative to the bundle."""
    options: dict[str, Any] = {"cache_dir": CACHE_DIR, "cache_key": cache_key}
    relative = ["cache_dir"]
    if flow.vitisai_config(spec, config) is not None and (config == "BF16" or spec.flow == "vaiml"):
        options["config_file"] = "vitisai_config.json"
        relative.append("config_file")
    options.update(flow.provider_extra(spec, config))
    out: dict[str, Any] = {
        "provider": "VitisAIExecutionProvider",
        "model": model_file(config),
        "provider_options": options,
        "relative_to_bundle": relative,
        "note": (
            f"{spec.toolchain}, {spec.flow} flow, {config}. cache_dir is relative to the bundle (the scripts make "
            "it private, mode 0700)"
            + ("; config_file is this bundle's vitisai_config.json" if "config_file" in options else "")
        ),
    }
    if "xclbin" in options:
        out["xclbin_root"] = "voe-4.0-win_amd64"
        out["note"] += "; xclbin is relative to %RYZEN_AI_INSTALLATION_PATH%/voe-4.0-win_amd64 (Ryzen AI 1.4 layout)"
    return out


def _template_values(spec: NpuSpec, flow: Flow, input_name: str) -> dict[str, str]:
    from onnx_pipeline.vitis.scheme import SCHEMES

    config = spec.quant_config
    return {
        "board": spec.board,
        "toolchain": spec.toolchain,
        "toolchain_where": flow.toolchain_where,
        "flow": spec.flow,
        "flow_title": flow.title,
        "architecture": spec.architecture,
        "config": config,
        "config_description": SCHEMES[config].description
        if config in SCHEMES
        else "the float model, converted to bfloat16 by the compiler",
        "model": model_file(config),
        "quark_model": f"model_{config.lower()}_quark.onnx",
        "input_name": input_name,
        "cache_dir": CACHE_DIR,
        "cache_note": f"    {CACHE_DIR}/<cache_key>/ (cache_key: the model's sha256)",
    }


def _quark_script(spec: NpuSpec, flow: Flow, values: dict[str, str]) -> str:
    tweaks, note = _QUARK_TWEAKS.get(spec.quant_config, ("    pass  # Quark's defaults", ""))
    if spec.quant_config == "BF16" and spec.flow == "vaiml":
        tweaks, note = "    pass  # not needed: the VAIML compiler converts FP32 to BF16 itself", " (optional here)"
    return render("npu_quark.py.tmpl", **values, tweaks=tweaks, tweaks_note=note)


def _write_readme(
    ctx: BuildContext, spec: NpuSpec, flow: Flow, values: dict[str, str], report: Any, has_config: bool
) -> None:
    s = report.summary()
    if s["whole_model_on_cpu"]:
        summary = f"The whole model would run on the CPU: {'; '.join(s['cpu_only_reasons'])}."
    else:
        cpu = "; ".join(f"`{n['name']}` ({n['op_type']}: {n['rule']})" for n in s["cpu_nodes"]) or "none"
        summary = (
            f"{s['on_npu']} of {s['nodes']} nodes on the NPU in {s['npu_subgraphs']} subgraph(s); on the CPU: {cpu}."
        )
    config_what = (
        "compiler passes for the Vitis AI EP (`init`, `vaiml_partition` with its `vaiml_config`)"
        if has_config
        else "not written: this configuration needs no compiler config file"
    )
    text = render(
        "NPU_README.md.tmpl",
        **values,
        model_what=f"the {spec.quant_config} model AMD's compiler takes (QDQ; float for BF16)",
        vitisai_config_what=config_what,
        report_summary=summary,
        commands=flow.commands(spec, spec.quant_config),
        sources="\n".join(f"- {x}" for x in spec.sources)
        + "\n\nNot confirmed:\n\n"
        + "\n".join(f"- {x}" for x in spec.unconfirmed),
    )
    (ctx.out / "AMD_NPU_README.md").write_text(text, encoding="utf-8")
