"""``ort``: ``model.fp32.ort`` (ORT format, for onnxruntime's mobile and minimal builds) and
``required_operators.config`` (the operators and types a reduced build must include).

Converted from ``model.fp32.onnx`` when the bundle has it (already optimised at the profile's
offline level: it is only re-encoded), else optimised from the run's model. The ORT format is a
flatbuffer, which cannot hold a model over 2 GiB: such a bundle is built without it and says so in
its manifest section and README.
"""

from __future__ import annotations

import time
from pathlib import Path

from onnx_pipeline.artifacts import fp32_optimized
from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, timed
from onnx_pipeline.artifacts.fp32_optimized import optimize_offline, too_large
from onnx_pipeline.errors import BundleError, first_line

SPEC = BuilderSpec("ort", "fp32", order=20, default_rank=50)
FILE = "model.fp32.ort"
OPERATORS = "required_operators.config"


def write_required_operators(ort_model: Path, output: Path) -> None:
    """The required-operators (and types) config for a reduced onnxruntime build, from an .ort model."""
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    try:
        create_config_from_models([ort_model], output, enable_type_reduction=True)
    except Exception as exc:  # the tool raises on models it cannot read
        raise BundleError(f"could not extract the required operators of {ort_model.name}: {first_line(exc)}") from None
    # The tool records the absolute path of the model it read: keep only the file name.
    text = output.read_text(encoding="utf-8").replace(str(ort_model), ort_model.name)
    output.write_text(text, encoding="utf-8")


def _not_built(ctx: BuildContext) -> ArtifactResult:
    reason = (
        f"the model's weights are {ctx.parts.nbytes / 2**30:.1f} GiB: the ORT format (a flatbuffer) cannot hold "
        "a model over 2 GiB, so this bundle has no .ort model; use the .onnx models (external data) instead"
    )
    return ArtifactResult(
        kind=SPEC.kind,
        section={"file": None, "built": False, "reason": reason},
        readme=(f"- no `{FILE}`: {reason}",),
        findings=(f"ort: {reason}",),
    )


def build(ctx: BuildContext) -> ArtifactResult:
    if too_large(ctx):
        return _not_built(ctx)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    optimized = ctx.built.get(fp32_optimized.SPEC.kind)
    if optimized is not None:
        # Already optimised at the offline level: load it as it is and write it in ORT format.
        optimize_offline(ctx, FILE, level="disabled", source=str(ctx.out / fp32_optimized.FILE))
        level: str = ctx.target.session.offline_optimization
    else:
        level = optimize_offline(ctx, FILE)
    write_required_operators(ctx.out / FILE, ctx.out / OPERATORS)
    timed(timings, "convert", start)
    model = ctx.check(FILE, SPEC.kind, SPEC.precision, level=level)
    return ArtifactResult(
        kind=SPEC.kind,
        models=(model,),
        timings=timings,
        readme=(
            f"- `{FILE}`: the same in ORT format, for onnxruntime's mobile and minimal builds; build a reduced "
            f"runtime with `--include_ops_by_config {OPERATORS} --enable_reduced_operator_type_support`",
            f"- `{OPERATORS}`: the operators and types that reduced build must include",
        ),
    )
