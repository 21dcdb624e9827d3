"""The seed notebook's sequence, done naively: the baseline that `onnx-pipeline export` is measured against.

torch.onnx.export → onnx.checker → onnxsim → an onnxruntime session → one comparison. Run by
benchmarks/pipeline.py and benchmarks/bundle_speed.py in its own process; prints one JSON line
with its wall time and the seconds of each stage.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    start = time.perf_counter()
    stages: dict[str, float] = {}
    mark = start

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[name] = round(now - mark, 3)
        mark = now

    import numpy as np
    import onnx
    import onnxruntime as ort
    import onnxsim
    import torch
    import torchvision

    lap("imports")
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    x = torch.randn(1, 3, 224, 224)
    lap("build")
    out_dir = Path(tempfile.mkdtemp(prefix="naive-"))
    path = out_dir / "vgg16.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    lap("export")
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded)
    lap("check")
    simplified, ok = onnxsim.simplify(loaded)
    onnx.save(simplified, str(out_dir / "vgg16-sim.onnx"))
    lap("simplify")
    session = ort.InferenceSession(str(out_dir / "vgg16-sim.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    actual = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-5)
    lap("verify")
    print(json.dumps({"wall_s": time.perf_counter() - start, "simplify_ok": bool(ok), "stages": stages}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
