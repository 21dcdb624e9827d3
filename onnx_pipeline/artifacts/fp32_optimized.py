"""``fp32-optimized``: ``model.fp32.onnx``, onnxruntime's graph optimizations applied offline.

The level is the profile's ``session.offline_optimization`` (recorded in the manifest): above "basic"
the result is specific to the execution provider, and "all" to the CPU's instruction set. A model
over protobuf's 2 GiB limit is written with its initializers in ``model.fp32.onnx.data`` beside it.
"""

from __future__ import annotations

import time
from typing import Any

from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, timed
from onnx_pipeline.onnxfile import PROTOBUF_LIMIT
from onnx_pipeline.runtime.session import SessionSettings, create_session

SPEC = BuilderSpec("fp32-optimized", "fp32", order=10, default_rank=40)
FILE = "model.fp32.onnx"
#: a model with more weight bytes than this is written with external data (protobuf's limit, less headroom)
EXTERNAL_ABOVE = PROTOBUF_LIMIT - (64 << 20)


def too_large(ctx: BuildContext) -> bool:
    """Whether the fp32 model cannot be one protobuf (its weights go to a data file)."""
    return ctx.parts.nbytes > EXTERNAL_ABOVE


def optimize_offline(ctx: BuildContext, file: str, *, level: str | None = None, source: Any = None) -> str:
    """Write the fp32 model optimised at ``level`` (default: the profile's offline level) to ``ctx.out / file``.

    ``source``: a model file to optimise instead of the run's. Returns the level.
    """
    level = level or ctx.target.session.offline_optimization
    # This session only writes the optimised graph: packing its weights for the kernels would cost a
    # second copy of them for nothing (the written model is the same).
    entries = {"session.disable_prepacking": "1"}
    if too_large(ctx) and not file.endswith(".ort"):
        entries |= {
            "session.optimized_model_external_initializers_file_name": f"{file}.data",
            "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
        }
    external = None
    if source is None:
        # The run's own file (onnxruntime maps its external data), or for a static-batch target the
        # fixed-batch graph with the weights handed over in memory (nothing written to disk first; a
        # reference to the run's file would stay in the written model).
        source = str(ctx.model_path)
        if ctx.dynamic_batch != ctx.run.dynamic_batch:
            parts = ctx.parts.session_source(refer_to_files=False)
            source, external = parts.skeleton.SerializeToString(), parts.external
    create_session(
        source,
        settings=SessionSettings(graph_optimization_level=level, config_entries=entries),
        external_initializers=external,
        optimized_output=ctx.out / file,
        what=f"the fp32 model (writing {file})",
    )
    return level


def build(ctx: BuildContext) -> ArtifactResult:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    level = optimize_offline(ctx, FILE)
    timed(timings, "optimize", start)
    model = ctx.check(FILE, SPEC.kind, SPEC.precision, level=level)
    where = f" (weights in `{FILE}.data` beside it)" if model.external_data else ""
    return ArtifactResult(
        kind=SPEC.kind,
        models=(model,),
        timings=timings,
        readme=(f"- `{FILE}`: fp32 with onnxruntime's graph optimizations applied offline (level {level}){where}",),
    )
