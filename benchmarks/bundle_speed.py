"""Benchmark: the seed's naive VGG16 sequence vs `onnx-pipeline export` alone and with three bundles.

In one process tree and one run, one after the other, each measured the same way:
1. the seed notebook's naive sequence (benchmarks/naive_seed.py: export, check, simplify, one comparison);
2. `onnx-pipeline export -m vgg16 -w random` on the sample photographs (export, check, simplify, verify);
3. the same with `-t cpu-x86_64 -t cuda -t vitis-ai-kv260 --calibration-images`.

Wall time; peak RSS two ways: the largest single process (the kernel's ru_maxrss of the waited-for
tree) and the whole process tree (resident sets of the command and every descendant summed, sampled
every 50 ms: what the machine really had to hold); and the per-stage timings of each. Goals (issue 12):
export + 3 bundles ≤ 1.0× naive, export alone ≤ 0.4×, the fp16 conversion ≤ 3 s, peak RSS ≤ 0.6× naive.

    python benchmarks/bundle_speed.py [--save after.json] [--compare before.json] [--json]

``--compare`` prints a per-stage before/after table against a file written by ``--save``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = ("cpu-x86_64", "cuda", "vitis-ai-kv260")
GOALS = {"bundles_wall_ratio": 1.0, "export_wall_ratio": 0.4, "fp16_convert_s": 3.0, "rss_ratio": 0.6}


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * page
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


_WRAPPER = r"""
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=sys.stdout, stderr=sys.stderr)
sys.stderr.write("\n__maxrss_kb__=%d\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(proc.returncode)
"""


def run(command: list[str]) -> dict[str, Any]:
    """Run ``command`` (through a fresh wrapper, so the kernel's peak is this command's alone): wall time, peaks."""
    wrapped = [sys.executable, "-c", _WRAPPER, *command]
    start = time.perf_counter()
    proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    maxrss_kb = int(stderr.rsplit("__maxrss_kb__=", 1)[1].split()[0])
    return {
        "wall_s": round(wall, 2),
        "process_peak_gb": round(maxrss_kb / 1e6, 2),
        "tree_peak_gb": round(peak / 1e9, 2),
        "stdout": stdout,
    }


def _bundle_stages(report: dict[str, Any]) -> dict[str, float]:
    stages: dict[str, float] = {}
    for target, bundle in report.get("steps", {}).get("bundles", {}).items():
        for name, seconds in bundle.get("timings", {}).items():
            if name != "total":
                stages[f"{target} {name}"] = seconds
    return stages


def benchmark(work: Path) -> dict[str, Any]:
    cli = shutil.which("onnx-pipeline") or str(Path(sys.executable).with_name("onnx-pipeline"))
    photos = work / "photos"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "sample_photos.py"), str(photos)], check=True, stdout=2)
    results: dict[str, Any] = {}
    naive = run([sys.executable, str(HERE / "naive_seed.py")])
    naive_json = json.loads(naive.pop("stdout").strip().splitlines()[-1])
    results["naive"] = {**naive, "stages": naive_json["stages"]}
    base = [cli, "export", "-m", "vgg16", "-w", "random", "--images", str(photos), "--json"]
    for name, extra in (
        ("export", []),
        ("export+3 bundles", [*(a for t in TARGETS for a in ("-t", t)), "--calibration-images", str(photos)]),
    ):
        out = work / name.replace(" ", "_").replace("+", "_")
        measured = run([*base, "--output", str(out), *extra])
        measured.pop("stdout")
        report = json.loads((out / "report.json").read_text())
        stages = {k: v for k, v in report["timings"].items() if k != "total"}
        results[name] = {**measured, "stages": {**stages, **_bundle_stages(report)}}
        shutil.rmtree(out)
    naive_wall, naive_rss = results["naive"]["wall_s"], results["naive"]["tree_peak_gb"]
    full = results["export+3 bundles"]
    results["ratios"] = {
        "bundles_wall_ratio": round(full["wall_s"] / naive_wall, 3),
        "export_wall_ratio": round(results["export"]["wall_s"] / naive_wall, 3),
        "fp16_convert_s": full["stages"].get("cuda fp16:convert"),
        "rss_ratio": round(max(full["tree_peak_gb"], results["export"]["tree_peak_gb"]) / naive_rss, 3),
        "process_rss_ratio": round(
            max(full["process_peak_gb"], results["export"]["process_peak_gb"]) / results["naive"]["process_peak_gb"],
            3,
        ),
    }
    return results


def print_results(results: dict[str, Any], before: dict[str, Any] | None) -> None:
    print(f"{'':20}{'wall s':>9}{'peak RSS GB (tree)':>20}{'largest process GB':>20}")
    for name in ("naive", "export", "export+3 bundles"):
        row = results[name]
        print(f"{name:20}{row['wall_s']:>9.2f}{row['tree_peak_gb']:>20.2f}{row['process_peak_gb']:>20.2f}")
    ratios = results["ratios"]
    print(
        f"export+3 bundles / naive: {ratios['bundles_wall_ratio']:.2f} (goal ≤ {GOALS['bundles_wall_ratio']}); "
        f"export / naive: {ratios['export_wall_ratio']:.2f} (goal ≤ {GOALS['export_wall_ratio']}); "
        f"fp16 conversion: {ratios['fp16_convert_s']} s (goal ≤ {GOALS['fp16_convert_s']}); "
        f"peak RSS / naive: {ratios['rss_ratio']:.2f} tree, {ratios['process_rss_ratio']:.2f} largest process "
        f"(goal ≤ {GOALS['rss_ratio']})"
    )
    for name in ("naive", "export+3 bundles"):
        stages = results[name]["stages"]
        old = before[name]["stages"] if before else {}
        print(f"\n{name} stages (s)" + ("   before → after" if before else ""))
        for stage in sorted(
            set(stages) | set(old), key=lambda s: (s not in stages, list(stages).index(s) if s in stages else 0)
        ):
            now = stages.get(stage)
            line = (
                f"  {stage:40}"
                + (f"{old.get(stage, '–')!s:>10} → " if before else "")
                + f"{now if now is not None else '–'!s:>8}"
            )
            print(line)
    if before:
        print("\nbefore → after")
        for name in ("naive", "export", "export+3 bundles"):
            b, a = before[name], results[name]
            print(
                f"  {name:20} wall {b['wall_s']:.1f} → {a['wall_s']:.1f} s; "
                f"peak RSS (tree) {b['tree_peak_gb']:.2f} → {a['tree_peak_gb']:.2f} GB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--compare", type=Path, help="a file written by --save: print before → after per stage")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bundles-"))
    try:
        results = benchmark(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    before = json.loads(args.compare.read_text()) if args.compare else None
    print_results(results, before)


if __name__ == "__main__":
    main()
