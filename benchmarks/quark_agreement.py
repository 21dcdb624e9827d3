"""Agreement of onnx-pipeline's AMD quantizer with AMD Quark (the reference) for XINT8, VINT8 and A8W8.

Both quantize the same small static CNN (opset 17, batch 1, built with onnx.helper) with the same
calibration samples; the script compares, tensor by tensor, the scales each chose (power-of-two
positions for XINT8/VINT8) and the outputs of the two QDQ models on held-out samples:

    make quark-venv                      # AMD Quark (amd-quark, onnx <= 1.22) in its own .venv-quark
    python benchmarks/quark_agreement.py # runs our side here and Quark's side in .venv-quark

Quark runs in a subprocess of the separate virtual environment (``--quark-side``): it pins an older
onnx and compiles its custom operators with g++/ninja on first import.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUARK_PYTHON = ROOT / ".venv-quark" / "bin" / "python"
CONFIGS = ("XINT8", "VINT8", "A8W8")


def small_cnn(path: Path) -> None:
    """Conv-ReLU x2, MaxPool, Conv-ReLU, Add (residual), GlobalAveragePool, Flatten, Gemm: static, opset 17."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def conv(name: str, cin: int, cout: int) -> list[object]:
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32) * 0.05
        return [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]

    inits = conv("c1", 3, 16) + conv("c2", 16, 16) + conv("c3", 16, 16)
    inits += [
        numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32) * 0.3, "fc_w"),
        numpy_helper.from_array((rng.standard_normal(10) * 0.05).astype(np.float32), "fc_b"),
    ]
    pads = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["c1"], name="c1", **pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], name="c2", **pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c3_w", "c3_b"], ["c3"], name="c3", **pads),
        helper.make_node("Relu", ["c3"], ["r3"], name="r3"),
        helper.make_node("Add", ["r3", "p"], ["sum"], name="add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def qdq_scales(model_path: Path) -> dict[str, float]:
    """Tensor → scale of every QuantizeLinear (activations) and weight/bias DequantizeLinear, any domain."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, float] = {}
    for n in model.graph.node:
        if not n.op_type.endswith(("QuantizeLinear", "DequantizeLinear")) or n.input[1] not in inits:
            continue
        scale = float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
        tensor = n.input[0]
        if n.op_type.endswith("DequantizeLinear") and tensor not in inits:
            continue  # activations are named by their QuantizeLinear
        for suffix in (
            "__float",
            "_quantized",
            "_QuantizeLinear_Output",
            "_DequantizeLinear_Output",
            "_QuantizeLinear_Input",
        ):
            tensor = tensor.removesuffix(suffix)
        out.setdefault(tensor, scale)
    return out


def quark_side(folder: Path, config: str) -> None:
    """In .venv-quark: quantize with Quark's default config, run it on the held-out samples, save scales/outputs."""
    import onnxruntime as ort
    from quark.onnx import ModelQuantizer, get_library_path
    from quark.onnx.quantization.config import Config, get_default_config

    samples = np.load(folder / "calibration.npy")

    class Reader:
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            self.i += 1
            return {"input": samples[self.i - 1 : self.i]} if self.i <= len(samples) else None

        def rewind(self) -> None:
            self.i = 0

    quant = get_default_config(config)
    if config == "VINT8":  # as AMD's VEK385 tutorials (and this bundle's quark_requantize.py) set it
        quant.extra_options["Int32Bias"] = False
        quant.enable_npu_cnn = True
    if config == "VINT8":
        quant.extra_options["UseRandomData"] = False  # the same calibration data as ours
    target = folder / f"quark_{config}.onnx"
    ModelQuantizer(Config(global_quant_config=quant)).quantize_model(str(folder / "model.onnx"), str(target), Reader())
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    heldout = np.load(folder / "heldout.npy")
    outputs = np.concatenate([session.run(None, {"input": x[None]})[0] for x in heldout])
    np.save(folder / f"quark_{config}_outputs.npy", outputs)
    (folder / f"quark_{config}_scales.json").write_text(json.dumps(qdq_scales(target)))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return min(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30)) for x, y in zip(a, b, strict=True))


def ours(folder: Path, config: str) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Our quantizer on the same model and data: scales, outputs, float outputs."""
    from onnx_pipeline.runtime.session import create_session
    from onnx_pipeline.vitis.graph import load_parts, to_static_opset17
    from onnx_pipeline.vitis.quantize import quantize
    from onnx_pipeline.vitis.scheme import scheme

    parts = load_parts(folder / "model.onnx")
    to_static_opset17(parts)
    heldout = np.load(folder / "heldout.npy")
    target = folder / f"ours_{config}.onnx"
    result = quantize(
        parts, np.load(folder / "calibration.npy"), heldout, target, scheme=scheme(config), scratch_dir=folder
    )
    session = create_session(target)
    outputs = np.concatenate([session.run(None, {"input": x[None]})[0] for x in heldout])
    return qdq_scales(target), outputs, result.reference_outputs["output"]


def compare(folder: Path, config: str) -> dict[str, object]:
    scales, outputs, reference = ours(folder, config)
    theirs = json.loads((folder / f"quark_{config}_scales.json").read_text())
    quark_outputs = np.load(folder / f"quark_{config}_outputs.npy")
    common = sorted(set(scales) & set(theirs))
    ratios = np.array([scales[t] / theirs[t] for t in common])
    steps = np.round(np.log2(ratios)).astype(int) if config in ("XINT8", "VINT8") else None
    return {
        "config": config,
        "tensors_compared": len(common),
        "only_ours": sorted(set(scales) - set(theirs)),
        "only_quark": sorted(set(theirs) - set(scales)),
        "scales_equal": f"{int(np.sum(np.isclose(ratios, 1.0, rtol=1e-6)))}/{len(common)}",
        "position_differences": None
        if steps is None
        else {int(k): int(v) for k, v in zip(*np.unique(steps, return_counts=True), strict=True)},
        "scale_ratio_range": [float(ratios.min()), float(ratios.max())] if len(ratios) else [],
        "differing": {t: [scales[t], theirs[t]] for t in common if not np.isclose(scales[t], theirs[t], rtol=1e-6)},
        "cosine_ours_vs_quark": round(_cos(outputs, quark_outputs), 6),
        "max_abs_diff_ours_vs_quark": float(np.max(np.abs(outputs - quark_outputs))),
        "cosine_ours_vs_float": round(_cos(outputs, reference), 6),
        "cosine_quark_vs_float": round(_cos(quark_outputs, reference), 6),
        "top1_agreement_ours_vs_quark": float(np.mean(outputs.argmax(1) == quark_outputs.argmax(1))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quark-side", nargs=2, metavar=("FOLDER", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    if args.quark_side:
        quark_side(Path(args.quark_side[0]), args.quark_side[1])
        return 0
    if not QUARK_PYTHON.is_file():
        print(f"skipped: {QUARK_PYTHON} does not exist; run `make quark-venv` first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small_cnn(folder / "model.onnx")
        rng = np.random.default_rng(0)
        np.save(folder / "calibration.npy", rng.standard_normal((32, 3, 32, 32)).astype(np.float32))
        np.save(folder / "heldout.npy", rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
        results = []
        for config in args.configs.split(","):
            done = subprocess.run(
                [str(QUARK_PYTHON), __file__, "--quark-side", str(folder), config],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
                cwd=folder,  # Quark writes quantized_info.csv into its working folder
            )
            if done.returncode != 0:
                print(f"Quark failed for {config}:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            results.append(compare(folder, config))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
