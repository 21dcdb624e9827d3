"""Benchmark: int8 calibration + quantization of VGG16, onnx-pipeline vs onnxruntime's stock flow.

Both take the same exported fp32 VGG16 (random weights, dynamic batch) and the same 8 calibration
samples (photographs from scikit-image through VGG16's preprocessing), with the cpu-x86_64
profile's settings (static QDQ, per-channel int8 weights, uint8 activations, reduce_range). Each
runs in its own process; wall time covers load → quantized model written.

- stock: ``quant_pre_process`` then ``quantize_static`` (MinMax, one run per sample);
- onnx-pipeline: ``artifacts.int8_qdq.quantize_qdq`` (batched min/max calibration on a
  weightless copy, ranges handed to onnxruntime's QDQ quantizer).

The two quantized models are then run on the same held-out photograph and compared.

    python benchmarks/int8_quantize.py [--json]
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

SAMPLES = 8


def _samples(path: Path) -> None:
    import numpy as np

    from onnx_pipeline.imagespec import PreprocessSpec
    from onnx_pipeline.runtime.preprocess import list_images, load_batch

    folder = path.with_suffix("")
    script = Path(__file__).resolve().parent.parent / "scripts" / "sample_photos.py"
    subprocess.run([sys.executable, str(script), str(folder)], check=True, capture_output=True)
    np.save(path, load_batch(list_images(folder), PreprocessSpec()))


def _export(path: Path) -> None:
    import torch
    from torchvision.models import vgg16

    torch.manual_seed(0)
    torch.onnx.export(
        vgg16().eval(), (torch.randn(2, 3, 224, 224),), str(path), dynamo=True, input_names=["input"],
        output_names=["output"], dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
    )  # fmt: skip


def _stock(model: Path, samples: Path, out: Path) -> None:
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = np.load(samples)[:SAMPLES]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(model), str(pre))
    quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip


def _ours(model: Path, samples: Path, out: Path) -> None:
    import numpy as np
    import onnx

    from onnx_pipeline.artifacts.int8_qdq import quantize_qdq
    from onnx_pipeline.onnxfile import infer_shapes
    from onnx_pipeline.targets import load_target

    spec = load_target("cpu-x86_64").quantization
    assert spec is not None
    loaded = onnx.load(str(model))
    infer_shapes(loaded)
    quantized, _ = quantize_qdq(loaded, "input", np.load(samples)[:SAMPLES], spec, dynamic_batch=True)
    onnx.save(quantized, str(out))


def _child(which: str, model: Path, samples: Path, out: Path) -> None:
    start = time.perf_counter()
    {"stock": _stock, "ours": _ours}[which](model, samples, out)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps({"wall_s": wall, "peak_rss_gb": peak}))


def _run(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _agreement(stock: Path, ours: Path, samples: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    held_out = np.load(samples)[SAMPLES:]
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": held_out})[0]
            for p in (stock, ours)]  # fmt: skip
    return {"max_abs_diff": float(np.max(np.abs(outs[0] - outs[1]))), "identical": bool(np.array_equal(*outs))}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("stock", "ours", "export", "samples"):
        which, *paths = sys.argv[1:]
        if which == "export":
            _export(Path(paths[0]))
        elif which == "samples":
            _samples(Path(paths[0]))
        else:
            _child(which, *(Path(p) for p in paths))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    model, samples = work / "vgg16.onnx", work / "samples.npy"
    subprocess.run([sys.executable, __file__, "export", str(model)], check=True, capture_output=True)
    subprocess.run([sys.executable, __file__, "samples", str(samples)], check=True, capture_output=True)
    stock = _run("stock", str(model), str(samples), str(work / "stock.onnx"))
    ours = _run("ours", str(model), str(samples), str(work / "ours.onnx"))
    summary = {
        "stock": stock,
        "onnx-pipeline": ours,
        "time_ratio": round(ours["wall_s"] / stock["wall_s"], 3),
        "target_time_ratio": 0.5,
        "outputs": _agreement(work / "stock.onnx", work / "ours.onnx", samples),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'':16}{'wall s':>10}{'peak RSS GB':>14}")
    for name in ("stock", "onnx-pipeline"):
        print(f"{name:16}{summary[name]['wall_s']:>10.2f}{summary[name]['peak_rss_gb']:>14.2f}")
    print(f"time ratio (onnx-pipeline / stock): {summary['time_ratio']:.2f} (target ≤ 0.5)")
    print(f"held-out outputs of the two int8 models: {summary['outputs']}")


if __name__ == "__main__":
    main()
