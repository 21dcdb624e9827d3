"""Time and peak RSS of the built-in power-of-two XINT8 quantizer on VGG16 (8 calibration samples).

Each phase runs in its own process so ``ru_maxrss`` measures the quantizer alone:

    python benchmarks/vitis_quantize.py                 # export VGG16 once (cached), then measure
    python benchmarks/vitis_quantize.py --model m.onnx  # measure on a given fp32 model

Reference (issue 4): AMD Quark 0.13 on the same job takes 95 s and 5.7 GB peak RSS; the target is
at most half the time (47.5 s) and 2 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUARK_SECONDS = 95.0
QUARK_RSS_GB = 5.7
TARGET_SECONDS = 0.5 * QUARK_SECONDS
TARGET_RSS_GB = 2.0
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "onnx-pipeline-bench" / "vgg16_random.onnx"


def export_vgg16(path: Path) -> None:
    """VGG16 with random weights, exported as the pipeline does (dynamo, dynamic batch)."""
    import torch
    from torchvision.models import vgg16

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        vgg16().eval(),
        (torch.randn(1, 3, 224, 224),),
        str(path),
        dynamo=True,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )


def measure(path: Path, samples: int) -> dict[str, object]:
    """Prepare (static batch 1, opset 17) and quantize; seconds and peak RSS of this process."""
    import numpy as np

    from onnx_pipeline.vitis.graph import load_parts, to_static_opset17
    from onnx_pipeline.vitis.quantize import quantize_xint8

    calibration = np.random.default_rng(0).standard_normal((samples, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        parts = load_parts(path)
        to_static_opset17(parts)
        prepared = time.perf_counter()
        result = quantize_xint8(parts, calibration, None, Path(tmp) / "model_xint8_qdq.onnx", scratch_dir=Path(tmp))
        total = time.perf_counter() - start
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {
        "model": str(path),
        "calibration_samples": samples,
        "seconds": round(total, 2),
        "seconds_prepare": round(prepared - start, 2),
        "seconds_by_phase": {k: round(v, 2) for k, v in result.seconds.items()},
        "peak_rss_gb": round(rss_gb, 3),
        "quark_seconds": QUARK_SECONDS,
        "quark_peak_rss_gb": QUARK_RSS_GB,
        "target_seconds": TARGET_SECONDS,
        "target_peak_rss_gb": TARGET_RSS_GB,
        "meets_time": total <= TARGET_SECONDS,
        "meets_memory": rss_gb <= TARGET_RSS_GB,
    }


def main() -> int:
    """Export if needed, then measure in a fresh process and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="fp32 ONNX model (default: VGG16, exported and cached)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--_export", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._export:
        export_vgg16(args._export)
        return 0
    if args._measure:
        print(json.dumps(measure(args._measure, args.samples)))
        return 0
    model = args.model or DEFAULT_CACHE
    if not model.is_file():
        subprocess.run([sys.executable, __file__, "--_export", str(model)], check=True)
    run = subprocess.run(
        [sys.executable, __file__, "--_measure", str(model), "--samples", str(args.samples)],
        check=True,
        capture_output=True,
        text=True,
    )
    line = run.stdout.strip().splitlines()[-1]
    print(line)
    figures = json.loads(line)
    return 0 if figures["meets_time"] and figures["meets_memory"] else 1


if __name__ == "__main__":
    sys.exit(main())
