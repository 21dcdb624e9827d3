"""Benchmark: the torchscript and torchserve bundles beside bench's figures for the same model, batch 1.

One run, on loopback, stops by itself:

1. export the model (random weights; ``--model``, tiny-vgg by default) with the torchscript and
   torchserve bundles, held out on scikit-image's photographs;
2. ``bench`` on the run folder: onnxruntime (the fp32 ONNX model) and PyTorch eager, batch 1;
3. the torchscript bundle's C++ program, built with CMake from ``cpp/`` as its README says, on one
   photograph preprocessed by ``onnx-pipeline preprocess`` (``--repeat``: model time only, after warm-up);
4. TorchServe serving ``model.mar`` (free loopback ports): sequential ``/predictions`` requests with
   the photograph's bytes, wall time per request (HTTP, the handler's preprocessing, the model).

    python benchmarks/torchscript_serving.py [--model vgg16] [--requests 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_pipeline import api
from tests.helpers import write_photos
from tests.torch_deploy import build_classify, torchserve_running


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)), "runs": len(values)}


def measure(model: str, work: Path, requests: int, repeat: int, seconds: float) -> dict[str, Any]:
    photos = work / "photos"
    photo = write_photos(photos, ("chelsea", "coffee", "astronaut", "rocket"))[0]
    run = work / "run"
    started = time.perf_counter()
    api.export(model, weights="random", output=run, calibration_images=photos, targets=["torchscript", "torchserve"])
    figures: dict[str, Any] = {"model": model, "export_and_bundles_s": round(time.perf_counter() - started, 1)}

    bench = api.bench(run, batch_sizes=[1], seconds=seconds)
    for row in bench.rows:
        figures[f"bench {row.backend} ({row.model})"] = {"p50_ms": row.p50_ms, "p90_ms": row.p90_ms, "runs": row.runs}

    bundle = run / "bundles" / "torchscript"
    started = time.perf_counter()
    program = build_classify(bundle, work / "classify-build")
    figures["cpp_build_s"] = round(time.perf_counter() - started, 1)
    tensor = api.preprocess(photo, bundle, work / "photo.bin")
    done = subprocess.run(
        [str(program), str(bundle / "model.pt"), str(tensor), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    latency = json.loads(done.stdout)["latency_ms"]
    figures["C++ LibTorch (model.pt)"] = {"p50_ms": latency["p50"], "mean_ms": latency["mean"], "runs": latency["runs"]}

    served = run / "bundles" / "torchserve"
    name = json.loads((served / "manifest.json").read_text())["artifacts"]["torchserve"]["model_name"]
    body = photo.read_bytes()
    with torchserve_running(served, work / "torchserve") as urls:
        url = f"{urls['inference']}/predictions/{name}"
        times = []
        for index in range(requests + 5):  # 5 warm-up requests
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=120) as answer:
                answer.read()
            if index >= 5:
                times.append(1000 * (time.perf_counter() - start))
    figures["TorchServe /predictions (HTTP, preprocessing, model)"] = _ms(times)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-vgg", help="a registry model name (tiny-vgg, vgg16, ...)")
    parser.add_argument("--requests", type=int, default=50, help="timed TorchServe requests")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs of the C++ program")
    parser.add_argument("--seconds", type=float, default=3.0, help="bench's least time per measurement")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="torchscript-serving-") as folder:
        figures = measure(args.model, Path(folder), args.requests, args.repeat, args.seconds)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"{args.model}, batch 1, one photograph (export and bundles: {figures['export_and_bundles_s']} s, "
        f"C++ build: {figures['cpp_build_s']} s)"
    )
    for key, value in figures.items():
        if isinstance(value, dict):
            print(f"  {key:<58} p50 {value['p50_ms']:9.2f} ms  ({value['runs']} runs)")


if __name__ == "__main__":
    main()
