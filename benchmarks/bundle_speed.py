"""Benchmark: the seed's naive VGG16 sequence vs `onnx-pipeline export` alone and with three bundles.

In one process tree and one run, one after the other, each measured the same way:
1. the seed notebook's naive sequence (benchmarks/naive_seed.py: export, check, simplify, one comparison);
2. `onnx-pipeline export -m vgg16 -w random` on the sample photographs (export, check, simplify, verify);
3. the same with `-t cpu-x86_64 -t cuda -t vitis-ai-kv260 --calibration-images`.

Wall time; peak RSS two ways: the largest single process (the kernel's ru_maxrss of the waited-for
tree) and the whole process tree (resident sets of the command and every descendant summed, sampled
every 50 ms: what the machine really had to hold); and the per-stage timings of each. Goals (issue 12):
export + 3 bundles ≤ 1.0× naive, export alone ≤ 0.4×, the fp16 conversion ≤ 3 s, peak RSS ≤ 0.6× naive.

    python benchmarks/bundle_speed.py [--baseline /tmp/main] [--save after.json] [--compare before.json] [--json]

``--baseline DIR`` runs that checkout's pipeline too, in the same run (the fair before/after on a
shared machine); ``--compare`` prints the before/after tables against a file written by ``--save``.
CPU seconds (user + system of every process) are printed beside wall time: on a machine other jobs
share, they move much less than wall time.
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
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write("\n__maxrss_kb__=%d __cpu_s__=%.3f\n" % (usage.ru_maxrss, usage.ru_utime + usage.ru_stime))
sys.exit(proc.returncode)
"""


def run(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` (through a fresh wrapper, so the kernel's peak is this command's alone): wall time, peaks."""
    wrapped = [sys.executable, "-c", _WRAPPER, *command]
    start = time.perf_counter()
    proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
    cpu_s = float(stderr.rsplit("__cpu_s__=", 1)[1].split()[0])
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu_s, 2),
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


RUNS = ("naive", "export", "export+3 bundles")


def _pipeline_runs(cli: str, photos: Path, work: Path, env: dict[str, str] | None, tag: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    base = [cli, "export", "-m", "vgg16", "-w", "random", "--images", str(photos), "--json"]
    for name, extra in (
        ("export", []),
        ("export+3 bundles", [*(a for t in TARGETS for a in ("-t", t)), "--calibration-images", str(photos)]),
    ):
        out = work / f"{tag}-{name.replace(' ', '_').replace('+', '_')}"
        measured = run([*base, "--output", str(out), *extra], env)
        measured.pop("stdout")
        report = json.loads((out / "report.json").read_text())
        stages = {k: v for k, v in report["timings"].items() if k != "total"}
        results[name] = {**measured, "stages": {**stages, **_bundle_stages(report)}}
        shutil.rmtree(out)
    return results


def _ratios(results: dict[str, Any]) -> dict[str, Any]:
    naive, export, full = results["naive"], results["export"], results["export+3 bundles"]
    return {
        "bundles_wall_ratio": round(full["wall_s"] / naive["wall_s"], 3),
        "export_wall_ratio": round(export["wall_s"] / naive["wall_s"], 3),
        "bundles_cpu_ratio": round(full["cpu_s"] / naive["cpu_s"], 3),
        "export_cpu_ratio": round(export["cpu_s"] / naive["cpu_s"], 3),
        "fp16_convert_s": full["stages"].get("cuda fp16:convert"),
        "rss_ratio": round(max(full["tree_peak_gb"], export["tree_peak_gb"]) / naive["tree_peak_gb"], 3),
        "process_rss_ratio": round(
            max(full["process_peak_gb"], export["process_peak_gb"]) / naive["process_peak_gb"], 3
        ),
    }


def benchmark(work: Path, baseline: Path | None) -> dict[str, Any]:
    """The naive sequence, then the pipeline (and the baseline checkout's pipeline, interleaved), once each."""
    cli = shutil.which("onnx-pipeline") or str(Path(sys.executable).with_name("onnx-pipeline"))
    photos = work / "photos"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "sample_photos.py"), str(photos)], check=True, stdout=2)
    naive = run([sys.executable, str(HERE / "naive_seed.py")])
    naive_json = json.loads(naive.pop("stdout").strip().splitlines()[-1])
    results: dict[str, Any] = {"naive": {**naive, "stages": naive_json["stages"]}}
    if baseline is not None:
        env = {**os.environ, "PYTHONPATH": str(baseline.resolve())}
        results["baseline"] = {"naive": results["naive"], **_pipeline_runs(cli, photos, work, env, "baseline")}
        results["baseline"]["ratios"] = _ratios(results["baseline"])
        results["baseline"]["checkout"] = str(baseline)
    results.update(_pipeline_runs(cli, photos, work, None, "this"))
    results["ratios"] = _ratios(results)
    return results


def _stage_table(name: str, stages: dict[str, float], old: dict[str, float] | None) -> None:
    print(f"\n{name} stages (s)" + ("   before → after" if old is not None else ""))
    order = list(stages) + [s for s in (old or {}) if s not in stages]
    for stage in order:
        now = stages.get(stage, "–")
        before = f"{(old or {}).get(stage, '–')!s:>10} → " if old is not None else ""
        print(f"  {stage:42}{before}{now!s:>8}")


def print_results(results: dict[str, Any], before: dict[str, Any] | None) -> None:
    """The figures; ``before``: the same figures from the baseline (same run) or an earlier --save."""
    print(f"{'':24}{'wall s':>9}{'CPU s':>9}{'peak RSS GB (tree)':>20}{'largest process GB':>20}")
    rows = [(name, results[name]) for name in RUNS]
    if before is not None:
        rows += [(f"{name} (before)", before[name]) for name in RUNS[1:]]
    for name, row in rows:
        print(
            f"{name:24}{row['wall_s']:>9.2f}{row.get('cpu_s', float('nan')):>9.2f}"
            f"{row['tree_peak_gb']:>20.2f}{row['process_peak_gb']:>20.2f}"
        )
    for label, data in (("before", before), ("after", results)):
        if data is None:
            continue
        ratios = data.get("ratios") or _ratios(data)
        print(
            f"{label}: export+3 bundles / naive {ratios['bundles_wall_ratio']:.2f} wall, "
            f"{ratios.get('bundles_cpu_ratio', float('nan')):.2f} CPU (goal ≤ {GOALS['bundles_wall_ratio']}); "
            f"export / naive {ratios['export_wall_ratio']:.2f} wall, "
            f"{ratios.get('export_cpu_ratio', float('nan')):.2f} CPU (goal ≤ {GOALS['export_wall_ratio']}); "
            f"fp16 conversion {ratios['fp16_convert_s']} s "
            f"(goal ≤ {GOALS['fp16_convert_s']}); peak RSS / naive {ratios['rss_ratio']:.2f} tree, "
            f"{ratios['process_rss_ratio']:.2f} largest process (goal ≤ {GOALS['rss_ratio']})"
        )
    _stage_table("naive", results["naive"]["stages"], None)
    for name in RUNS[1:]:
        _stage_table(name, results[name]["stages"], before[name]["stages"] if before else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--compare", type=Path, help="a file written by --save: print before → after per stage")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of the code to compare with (e.g. `git worktree add /tmp/main main`): its pipeline runs "
        "in the same run, interleaved, so both meet the same machine load",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bundles-"))
    try:
        results = benchmark(work, args.baseline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    before = results.get("baseline") or (json.loads(args.compare.read_text()) if args.compare else None)
    print_results(results, before)


if __name__ == "__main__":
    main()
