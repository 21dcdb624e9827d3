"""Benchmark: a model over 2 GB (tests/models/large_linear.py, 2.16 GB of float32 weights) through every target.

`onnx-pipeline export` once, then `onnx-pipeline bundle RUN -t TARGET` for each target in its own
process, then `verify BUNDLE` and `predict` on each bundle. Prints each command's wall time and peak
RSS (largest process, and the whole process tree sampled every 50 ms) against the model's float32
size. Goals (issue 14): every bundle built; peak RSS ≤ 2.5× the model's size for each target.

    python benchmarks/large_model.py [--targets cpu-x86_64 cuda vitis-ai-kv260] [--all] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bundle_speed import run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FACTORY = f"{ROOT / 'tests' / 'models' / 'large_linear.py'}:build"
TARGETS = ("cpu-x86_64", "cuda", "vitis-ai-kv260")
#: the other artifact kinds (AMD's NPU flows, the seed's PyTorch paths): ``--targets`` with them, or ``--all``
MORE_TARGETS = ("vitis-ai-vek385", "ryzen-ai-xdna2", "torchscript", "torchserve")
GOAL = 2.5
MODEL_SUFFIXES = (".onnx", ".data", ".ort", ".pt", ".mar")


def _row(name: str, measured: dict[str, Any], size_gb: float) -> dict[str, Any]:
    return {
        "step": name,
        "wall_s": measured["wall_s"],
        "process_peak_gb": measured["process_peak_gb"],
        "tree_peak_gb": measured["tree_peak_gb"],
        "ratio": round(max(measured["process_peak_gb"], measured["tree_peak_gb"]) / size_gb, 2),
    }


def benchmark(work: Path, targets: tuple[str, ...]) -> dict[str, Any]:
    cli = shutil.which("onnx-pipeline") or str(Path(sys.executable).with_name("onnx-pipeline"))
    photos = work / "photos"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "sample_photos.py"), str(photos)], check=True, stdout=2)
    out = work / "run"
    rows = []
    export = run([cli, "export", "-m", FACTORY, "-w", "random", "-o", str(out), "--images", str(photos), "--json"])
    manifest = json.loads((out / "manifest.json").read_text())
    size_gb = sum(Path(out / f).stat().st_size for f in manifest["files"] if f.startswith("model.onnx")) / 1e9
    rows.append(_row("export", export, size_gb))
    for target in targets:
        # --trust-source: the torch targets rebuild the run's model, this benchmark's own factory file
        bundle = [cli, "bundle", str(out), "-t", target, "--calibration-images", str(photos), "--trust-source"]
        bundle.append("--json")
        rows.append(_row(f"bundle {target}", run(bundle), size_gb))
        folder = out / "bundles" / target
        rows.append(_row(f"verify {target}", run([cli, "verify", str(folder), "--json"]), size_gb))
        models = json.loads((folder / "manifest.json").read_text()).get("models", [])
        if any(str(m.get("file", "")).endswith((".onnx", ".ort")) for m in models):  # predict runs ONNX bundles
            predict = [cli, "predict", str(folder), str(photos / "chelsea.jpg"), "--json"]
            rows.append(_row(f"predict {target}", run(predict), size_gb))
    files = {
        target: sorted(p.name for p in (out / "bundles" / target).iterdir() if p.suffix in MODEL_SUFFIXES)
        for target in targets
    }
    return {"model_gb": round(size_gb, 3), "external_data": manifest.get("external_data"), "rows": rows, "files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--all", action="store_true", help=f"also {', '.join(MORE_TARGETS)}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-large-"))
    try:
        result = benchmark(work, tuple(args.targets) + (MORE_TARGETS if args.all else ()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model: {result['model_gb']:.2f} GB of float32 weights (run folder: model.onnx + {result['external_data']})")
    print(f"{'':28}{'wall s':>9}{'peak RSS GB':>13}{'tree GB':>10}{'× model':>9}")
    for row in result["rows"]:
        flag = "" if not row["step"].startswith("bundle") or row["ratio"] <= GOAL else f"  (over the {GOAL}× goal)"
        print(
            f"{row['step']:28}{row['wall_s']:>9.1f}{row['process_peak_gb']:>13.2f}{row['tree_peak_gb']:>10.2f}"
            f"{row['ratio']:>9.2f}{flag}"
        )
    for target, names in result["files"].items():
        print(f"{target}: {', '.join(names)}")


if __name__ == "__main__":
    main()
