"""Profile tables of the serving artifacts: ``[triton]`` and ``[torchserve]``, validated into their specs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnx_pipeline.targets.types import TorchServeSpec, TritonSpec

if TYPE_CHECKING:
    from onnx_pipeline.targets.profiles import _Table


def parse_triton(table: _Table | None) -> TritonSpec | None:
    """Validate a profile's ``[triton]`` table (the Triton model repository's ``config.pbtxt``)."""
    if table is None:
        return None
    table.refuse_unknown(
        {
            "max_batch_size",
            "preferred_batch_sizes",
            "max_queue_delay_microseconds",
            "instance_count",
            "instance_kind",
            "accelerator",
            "precision_mode",
        }
    )
    spec = TritonSpec(
        max_batch_size=table.get("max_batch_size", int, 8),
        preferred_batch_sizes=table.get_list("preferred_batch_sizes", int, ()),
        max_queue_delay_microseconds=table.get("max_queue_delay_microseconds", int, 100),
        instance_count=table.get("instance_count", int, 1),
        instance_kind=table.get("instance_kind", str, "KIND_GPU", choices=("KIND_GPU", "KIND_CPU", "KIND_AUTO")),
        accelerator=table.get("accelerator", str, "tensorrt", choices=("tensorrt", "")),
        precision_mode=table.get("precision_mode", str, "FP16", choices=("FP16", "FP32")),
    )
    if spec.max_batch_size < 1 or spec.instance_count < 1 or spec.max_queue_delay_microseconds < 0:
        raise table.fail("max_batch_size and instance_count must be >= 1, max_queue_delay_microseconds >= 0")
    bad = [b for b in spec.preferred_batch_sizes if not 1 <= b <= spec.max_batch_size]
    if bad:
        raise table.fail(f"preferred_batch_sizes {bad} lie outside 1..max_batch_size ({spec.max_batch_size})")
    return spec


_TORCHSERVE_INTS = {
    "batch_size": 1,
    "max_batch_delay_ms": 0,
    "min_workers": 1,
    "max_workers": 1,
    "response_timeout_s": 1,
    "number_of_gpu": 0,
    "top_k": 1,
    "inference_port": 1,
    "management_port": 1,
    "metrics_port": 1,
}


def parse_torchserve(table: _Table | None) -> TorchServeSpec | None:
    """Validate a profile's ``[torchserve]`` table (``config.properties`` of the TorchServe archive)."""
    if table is None:
        return None
    table.refuse_unknown(set(_TORCHSERVE_INTS))
    values = {key: table.get(key, int, getattr(TorchServeSpec, key)) for key in _TORCHSERVE_INTS}
    for key, low in _TORCHSERVE_INTS.items():
        high = 65535 if key.endswith("_port") else None
        if values[key] < low or (high is not None and values[key] > high):
            raise table.fail(f"'{table.key_path(key)}' must be >= {low}" + (f" and <= {high}" if high else ""))
    if values["min_workers"] > values["max_workers"]:
        raise table.fail("min_workers must not exceed max_workers")
    if len({values["inference_port"], values["management_port"], values["metrics_port"]}) != 3:
        raise table.fail("inference_port, management_port and metrics_port must differ")
    return TorchServeSpec(**values)
