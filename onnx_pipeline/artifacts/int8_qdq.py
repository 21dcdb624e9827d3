"""``int8-qdq``: ``model.int8.onnx``, static int8 QDQ with a fast min/max calibration.

onnxruntime's stock flow (``quant_pre_process`` then ``quantize_static``) saves the model several
times (pre-processed, shape-inferred, augmented with ReduceMin/ReduceMax outputs) and runs the
augmented model once per calibration sample. For a min/max calibration none of that is needed:
the run folder's model is already simplified and shape-inferred, so here the augmented model is
built in memory, run on the whole calibration set in a few batched runs, and the ranges are handed
to onnxruntime's ``QDQQuantizer`` directly. The quantized graph is the one ``quantize_static``
writes for the same ranges (same quantizer, same options). Other calibration methods (entropy,
percentile) go through ``quantize_static`` with a data reader.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_pipeline.artifacts._fallback import LoweredModel, sensitivity_and_fallback
from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec
from onnx_pipeline.onnxfile import ModelParts, split_model, write_model
from onnx_pipeline.runtime.session import create_session
from onnx_pipeline.targets import QuantizationSpec

log = logging.getLogger(__name__)

SPEC = BuilderSpec("int8-qdq", "int8", order=30, requires=("quantization",), calibrated=True, default_rank=10)
FILE = "model.int8.onnx"

#: samples per calibration run: bounds memory (VGG16: ~0.1 GB of activations per sample)
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class QuantizeResult:
    """What the quantizer did, for the bundle manifest."""

    calibration_method: str
    calibration_samples: int
    calibrated_tensors: int
    quantized_nodes: int
    seconds_calibrate: float
    seconds_quantize: float
    settings: dict[str, Any]


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


def _op_types_to_quantize() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _tensors_to_calibrate(model: Any, op_types: list[str]) -> list[str]:
    """Float activations entering or leaving a quantizable node (what onnxruntime's calibrator picks)."""
    from onnx import TensorProto

    infos = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.output, model.graph.input)}
    initializers = {init.name for init in model.graph.initializer}
    wanted = set(op_types)
    names: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        for name in itertools.chain(node.input, node.output):
            if not name or name in seen or name in initializers or name not in infos:
                continue
            info = infos[name]
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type in (
                TensorProto.FLOAT,
                TensorProto.FLOAT16,
            ):
                seen.add(name)
                names.append(name)
    return names


def _augmented(parts: ModelParts, tensors: list[str]) -> Any:
    """A weightless copy of the model with each tensor's global min and max as extra (scalar) outputs."""
    import onnx
    from onnx import helper

    augmented = parts.weightless()
    graph = augmented.graph
    existing = {o.name for o in graph.output}
    for index, name in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"__calib_{index}_{op}"
            graph.node.append(helper.make_node(op, [name], [out], keepdims=0, name=out))
            if out not in existing:
                graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, []))
    return augmented


def _batches(samples: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for start in range(0, len(samples), batch):
        yield samples[start : start + batch]


def calibrate_minmax(parts: ModelParts, input_name: str, samples: np.ndarray, *, dynamic_batch: bool) -> dict[str, Any]:
    """Min/max of every tensor to calibrate over ``samples``, in as few onnxruntime runs as memory allows.

    The weights are handed to onnxruntime in memory (``parts``' arrays), never serialised.
    """
    from onnx_pipeline.runtime.session import SessionSettings

    tensors = _tensors_to_calibrate(parts.skeleton, _op_types_to_quantize())
    augmented = _augmented(parts, tensors)
    names = [t.name for t in parts.skeleton.graph.initializer if t.name in parts.weights]
    arrays = parts.session_arrays(names)
    # Basic rewrites only: fusions (Conv+Relu) would hide the tensors being measured. The weights are
    # used where they are (a few batched runs): no packed second copy of them.
    session = create_session(
        augmented.SerializeToString(),
        settings=SessionSettings(graph_optimization_level="basic", config_entries={"session.disable_prepacking": "1"}),
        external_initializers=(names, arrays),
        what="the calibration model",
    )
    del augmented
    outputs = [f"__calib_{i}_{op}" for i in range(len(tensors)) for op in ("ReduceMin", "ReduceMax")]
    lows = np.full(len(tensors), np.inf, dtype=np.float32)
    highs = np.full(len(tensors), -np.inf, dtype=np.float32)
    for chunk in _batches(samples, CALIBRATION_BATCH if dynamic_batch else 1):
        values = session.run(outputs, {input_name: chunk})
        lows = np.minimum(lows, np.asarray(values[0::2], dtype=np.float32))
        highs = np.maximum(highs, np.asarray(values[1::2], dtype=np.float32))
    return {name: (np.float32(lo), np.float32(hi)) for name, lo, hi in zip(tensors, lows, highs, strict=True)}


class _ArrayReader:
    """A CalibrationDataReader over an in-memory array (one sample per call)."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self.input_name = input_name
        self.samples = samples
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.samples):
            return None
        sample = self.samples[self.index : self.index + 1]
        self.index += 1
        return {self.input_name: sample}

    def rewind(self) -> None:
        self.index = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.index = start_index


def quantize_qdq(
    model: ModelParts | Any,
    input_name: str,
    samples: np.ndarray,
    spec: QuantizationSpec,
    *,
    dynamic_batch: bool,
) -> tuple[Any, QuantizeResult]:
    """Quantize an fp32 model (``ModelParts`` or a ModelProto) to int8 QDQ calibrated on ``samples``.

    Returns (the quantized ModelProto, what was done). ``model`` must carry shape information
    (value_info) for its activations (``infer_shapes``); it is not modified.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import add_infer_metadata, update_opset_version

    extra_options: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": spec.symmetric_activations}
    settings = {
        "format": "QDQ",
        "per_channel": spec.per_channel,
        "reduce_range": spec.reduce_range,
        "activation_type": spec.activation_type,
        "weight_type": spec.weight_type,
        "calibration_method": spec.calibration_method,
        "symmetric_activations": spec.symmetric_activations,
        "extra_options": extra_options,
    }
    parts = model if isinstance(model, ModelParts) else split_model(model)
    if spec.calibration_method != "minmax":
        return _quantize_stock(parts.full_model(), input_name, samples, spec, extra_options, settings)

    start = time.perf_counter()
    ranges = calibrate_minmax(parts, input_name, samples, dynamic_batch=dynamic_batch)
    parts.release()  # the mapped weights were read by the calibration session: the quantizer copies them
    if spec.symmetric_activations:
        ranges = {k: (-max(abs(lo), abs(hi)), max(abs(lo), abs(hi))) for k, (lo, hi) in ranges.items()}
    seconds_calibrate = time.perf_counter() - start

    start = time.perf_counter()
    work = parts.full_model()  # the quantizer rewrites the model it is given
    weight_type, activation_type = _quant_type(spec.weight_type), _quant_type(spec.activation_type)
    work = update_opset_version(work, weight_type)
    # The caller's model is shape-inferred (see ``infer_shapes``): mark it so, or the quantizer saves,
    # reloads and re-infers the whole model (seconds for VGG16).
    add_infer_metadata(work)
    quantizer = QDQQuantizer(
        work,
        spec.per_channel,
        spec.reduce_range,
        weight_type,
        activation_type,
        TensorsData(CalibrationMethod.MinMax, ranges),
        [],
        [],
        _op_types_to_quantize(),
        extra_options,
    )
    quantized = quantizer.quantize_model()
    seconds_quantize = time.perf_counter() - start
    result = QuantizeResult(
        calibration_method="minmax",
        calibration_samples=len(samples),
        calibrated_tensors=len(ranges),
        quantized_nodes=sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear"),
        seconds_calibrate=round(seconds_calibrate, 3),
        seconds_quantize=round(seconds_quantize, 3),
        settings=settings,
    )
    log.info("int8 QDQ: calibrated %d tensors on %d samples", len(ranges), len(samples))
    return quantized, result


def _quantize_stock(
    model: Any,
    input_name: str,
    samples: np.ndarray,
    spec: QuantizationSpec,
    extra_options: dict[str, Any],
    settings: dict[str, Any],
) -> tuple[Any, QuantizeResult]:
    """Entropy / percentile calibration: onnxruntime's own calibrators, one run per sample."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[spec.calibration_method]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnx-pipeline-quant-") as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            model,
            str(out),
            _ArrayReader(input_name, samples),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=_op_types_to_quantize(),
            per_channel=spec.per_channel,
            reduce_range=spec.reduce_range,
            activation_type=_quant_type(spec.activation_type),
            weight_type=_quant_type(spec.weight_type),
            calibrate_method=method,
            extra_options=extra_options,
        )
        quantized = onnx.load(str(out))
    seconds = time.perf_counter() - start
    result = QuantizeResult(
        calibration_method=spec.calibration_method,
        calibration_samples=len(samples),
        calibrated_tensors=-1,
        quantized_nodes=sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear"),
        seconds_calibrate=round(seconds, 3),
        seconds_quantize=0.0,
        settings=settings,
    )
    return quantized, result


def build(ctx: BuildContext) -> ArtifactResult:
    spec = ctx.target.quantization
    assert spec is not None and ctx.data.calibration is not None
    quantized, result = quantize_qdq(
        ctx.parts, ctx.model.graph.input[0].name, ctx.data.calibration, spec, dynamic_batch=ctx.dynamic_batch
    )
    written = write_model(quantized, ctx.out / FILE)
    del quantized
    model = ctx.check(FILE, SPEC.kind, SPEC.precision)
    lowered = LoweredModel(FILE, SPEC.kind, SPEC.precision, ctx.parts, ctx.thresholds(SPEC.precision))
    repair = sensitivity_and_fallback(ctx, lowered, model)
    section = {"file": FILE, **result.settings, "quantized_tensors": result.quantized_nodes, **repair.section}
    synthetic = bool(ctx.data.calibration_info and ctx.data.calibration_info.get("synthetic"))
    return ArtifactResult(
        kind=SPEC.kind,
        models=(repair.model,),
        section=section,
        timings={"calibrate": result.seconds_calibrate, "quantize": result.seconds_quantize, **repair.timings},
        hashes=repair.hashes or written.hashes(ctx.out),
        readme=(
            f"- `{FILE}`: int8 static QDQ, per-channel weights"
            + (f" ({len(repair.kept)} layer(s) kept in float32 to meet the thresholds)" if repair.kept else "")
            + (" — **calibrated on SYNTHETIC data; rebuild with calibration images**" if synthetic else ""),
        ),
    )
