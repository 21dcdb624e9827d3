"""Run an ONNX model with a few of its intermediate tensors as outputs, its weights loaded once.

Every tensor marked as an output at once would hold every activation of the model in memory (for
VGG16 on a handful of samples, gigabytes); a probe marks only the tensors asked for in one call. The
weights are loaded once: those still in their file are referred to there (onnxruntime maps it), the
others handed to each session in memory (``ModelParts.session_source``), so a new set of outputs costs
a graph, not a model, and onnxruntime's prepacked weight copies are turned off.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.errors import PipelineError, VerificationError
from onnx_pipeline.files import release_memory
from onnx_pipeline.onnxfile import ModelParts, large_initializers, load_parts, weightless_copy
from onnx_pipeline.onnxfile.parts import release_mapping

#: default budget for one probe call: the probed tensors of every sample, as onnxruntime returns them
PROBE_BYTES = 64 << 20


class OnnxProbe:
    """An ONNX model whose intermediate tensors can be fetched, a few per call."""

    def __init__(
        self,
        model: str | Path | ModelParts | Any,
        *,
        providers: Sequence[str] | None = None,
        qdq_as_float: bool = False,
        error: type[PipelineError] = VerificationError,
    ) -> None:
        """``model``: a path (its weights mapped, not read), ``ModelParts`` (its arrays used where they are,
        never copied: a model over 2 GB costs no second copy), or a loaded ``ModelProto``."""
        import onnx

        self._maps: list[Any] = []
        named = Path(model).name if isinstance(model, str | Path) else None
        if isinstance(model, str | Path):
            model = load_parts(Path(model))
        if isinstance(model, ModelParts):
            self.name = named or model.skeleton.graph.name or "model"
            source = model.session_source()  # weights still in their file are referred to there, not copied
            self._names, self._arrays = source.external
            self._skeleton, self._folder = source.skeleton, source.folder
            self._maps = list(model.maps)
        else:
            self.name = model.graph.name or "model"
            self._names, self._arrays, self._skeleton = _split(model)
            self._folder = None
        #: the graph (large weights referred to in their file, or in-memory placeholders)
        self.model = self._skeleton
        initializers = {i.name for i in self._skeleton.graph.initializer}
        inputs = [i.name for i in self._skeleton.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise error(f"{self.name} has {len(inputs)} inputs: per-layer comparison handles single-input models")
        self.input_name = inputs[0]
        try:  # shapes only size the probe calls: a model shape inference cannot follow still runs
            self._per_sample = _per_sample_elements(onnx.shape_inference.infer_shapes(self._skeleton).graph)
        except Exception:
            self._per_sample = {}
        self._providers = list(providers) if providers else None
        self._qdq_as_float = qdq_as_float
        self._error = error

    def per_sample_elements(self, tensor: str) -> int | None:
        """Elements of ``tensor`` per sample (the batch axis excluded), when shape inference knows them."""
        return self._per_sample.get(tensor)

    def run(self, tensors: Sequence[str], batches: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """``tensors`` on every batch, concatenated on the batch axis."""
        import onnx

        from onnx_pipeline.runtime.session import ONE_SHOT, create_session

        probed = onnx.ModelProto()
        probed.CopyFrom(self._skeleton)  # the graph only: the weights are placeholders
        del probed.graph.output[:]
        for name in tensors:
            probed.graph.output.add().name = name  # onnxruntime infers the type
        session = create_session(
            probed.SerializeToString(),
            providers=self._providers,
            settings=ONE_SHOT,
            qdq_as_float=self._qdq_as_float,
            external_initializers=(self._names, self._arrays),
            external_data_folder=self._folder,
            error=self._error,
            what=self.name,
        )
        results: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
        for batch in batches:
            for name, value in zip(tensors, session.run(list(tensors), {self.input_name: batch}), strict=True):
                results[name].append(np.asarray(value))
        del session
        for mapped in self._maps:  # the weights' pages leave this process (re-read from the page cache)
            release_mapping(mapped)
        release_memory()  # the session's arena goes back before the next one is made
        return {name: np.concatenate(values) for name, values in results.items()}


def _split(loaded: Any) -> tuple[list[str], list[np.ndarray], Any]:
    """A loaded ModelProto's large initializers (names, arrays) and its weightless copy."""
    from onnx import numpy_helper

    large = large_initializers(loaded)
    names = [t.name for t in loaded.graph.initializer if t.name in large]
    arrays = [np.ascontiguousarray(numpy_helper.to_array(t)) for t in loaded.graph.initializer if t.name in large]
    return names, arrays, weightless_copy(loaded, large)


def _per_sample_elements(graph: Any) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for value in (*graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) >= 1 and all(d.HasField("dim_value") for d in dims[1:]):
            sizes[value.name] = int(np.prod([d.dim_value for d in dims[1:]], dtype=np.int64))
    return sizes


def chunks(
    names: Sequence[str], probe: OnnxProbe, samples: int, budget: int = PROBE_BYTES, most: int = 16
) -> Iterator[list[str]]:
    """``names`` in runs whose float32 values for ``samples`` samples fit ``budget`` (at least one each)."""
    run: list[str] = []
    used = 0
    for name in names:
        size = 4 * samples * (probe.per_sample_elements(name) or 1 << 16)
        if run and (used + size > budget or len(run) >= most):
            yield run
            run, used = [], 0
        run.append(name)
        used += size
    if run:
        yield run
