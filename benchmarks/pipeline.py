"""Benchmark: the seed notebook's naive sequence vs `onnx-pipeline export` on VGG16, side by side.

Each runs in its own process, one after the other, measured the same way: wall time and the
peak resident set size of the largest process it ran (getrusage of the waited-for children,
read by a fresh wrapper process per command so one run's peak cannot leak into the other's).
`onnx-pipeline export` spawns its PyTorch stage as a child process; its peak is that of the
larger of the two, and the two never hold their big allocations at the same time (the parent
imports no torch and loads the ONNX weights only after the child has exited).

    python benchmarks/pipeline.py [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": proc.returncode, "wall_s": wall, "peak_rss_gb": peak_kb / 1e6, "stderr": proc.stderr[-2000:]}))
"""


def measure(command: list[str]) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    if data["rc"] != 0:
        raise SystemExit(f"{' '.join(command)} failed ({data['rc']}):\n{data['stderr']}")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (the best wall time is kept)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    cli = shutil.which("onnx-pipeline") or str(Path(sys.executable).with_name("onnx-pipeline"))
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    runs: dict[str, list[dict[str, float]]] = {"naive": [], "onnx-pipeline": []}
    try:
        for i in range(args.repeat):
            runs["naive"].append(measure([sys.executable, str(HERE / "naive_seed.py")]))
            out = work / f"run{i}"
            runs["onnx-pipeline"].append(
                measure([cli, "export", "--model", "vgg16", "--weights", "random", "--output", str(out), "--json"])
            )
            report = json.loads((out / "report.json").read_text())
            verified = report["steps"]["verify"]
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {name: min(r, key=lambda d: d["wall_s"]) for name, r in runs.items()}
    peak = {name: max(d["peak_rss_gb"] for d in r) for name, r in runs.items()}
    summary = {
        "naive": {"wall_s": round(best["naive"]["wall_s"], 2), "peak_rss_gb": round(peak["naive"], 2), "checks": 1},
        "onnx-pipeline": {
            "wall_s": round(best["onnx-pipeline"]["wall_s"], 2),
            "peak_rss_gb": round(peak["onnx-pipeline"], 2),
            "checks": sum(s["shape"][0] for s in verified["samples"]),
            "timings": report["timings"],
        },
        "wall_ratio": round(best["onnx-pipeline"]["wall_s"] / best["naive"]["wall_s"], 3),
        "rss_ratio": round(peak["onnx-pipeline"] / peak["naive"], 3),
        "targets": {"wall_ratio": 0.5, "rss_ratio": 0.5},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'':16}{'wall s':>10}{'peak RSS GB':>14}{'samples compared':>18}")
    for name in ("naive", "onnx-pipeline"):
        row = summary[name]
        print(f"{name:16}{row['wall_s']:>10.2f}{row['peak_rss_gb']:>14.2f}{row['checks']:>18}")
    print(
        f"ratio (pipeline / naive): wall {summary['wall_ratio']:.2f} (target ≤ 0.5), "
        f"peak RSS {summary['rss_ratio']:.2f} (target ≤ 0.5)"
    )
    print("pipeline step timings (s):", json.dumps(summary["onnx-pipeline"]["timings"]))


if __name__ == "__main__":
    main()
