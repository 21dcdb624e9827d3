"""``fp32-optimized``: ``model.fp32.onnx``, onnxruntime's graph optimizations applied offline.

The level is the profile's ``session.offline_optimization`` (recorded in the manifest): above "basic"
the result is specific to the execution provider, and "all" to the CPU's instruction set.
"""

from __future__ import annotations

import time

from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, timed
from onnx_pipeline.runtime.session import SessionSettings, create_session

SPEC = BuilderSpec("fp32-optimized", "fp32", order=10, default_rank=40)
FILE = "model.fp32.onnx"


def optimize_offline(ctx: BuildContext, file: str) -> str:
    """Write the fp32 model optimised at the profile's offline level to ``ctx.out / file``; returns the level."""
    level = ctx.target.session.offline_optimization
    create_session(
        prepared_fp32(ctx),
        settings=SessionSettings(graph_optimization_level=level),
        optimized_output=ctx.out / file,
        what=f"the fp32 model (writing {file})",
    )
    return level


def prepared_fp32(ctx: BuildContext) -> str:
    """The fp32 model file to optimise: the run's own, or a fixed-batch copy for a static-batch target."""
    if ctx.dynamic_batch == ctx.run.dynamic_batch:
        return str(ctx.model_path)
    import onnx

    path = ctx.scratch / "model.static.onnx"
    if not path.exists():
        onnx.save(ctx.model, str(path))
    return str(path)


def build(ctx: BuildContext) -> ArtifactResult:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    level = optimize_offline(ctx, FILE)
    timed(timings, "optimize", start)
    model = ctx.check(FILE, SPEC.kind, SPEC.precision, level=level)
    return ArtifactResult(
        kind=SPEC.kind,
        models=(model,),
        timings=timings,
        readme=(f"- `{FILE}`: fp32 with onnxruntime's graph optimizations applied offline (level {level})",),
    )
