"""The measured noise floor on torchvision classifiers, the fault set, and verify's time on VGG16.

1. Classifiers (random weights, rescaled as `export` does; verify's own inputs and batch sizes): for
   each model `onnx-pipeline export --json` runs in its own process; printed: PyTorch float32's own
   error against float64 (the floor), the ONNX model's, their ratio (max and mean), the verdict,
   and the verdict of the old scale-aware rule. With `--localize`, `verify RUN --localize` also
   walks every layer and prints the largest per-layer ratio of the clean export.
2. Faults: small changes to a clean export (a convolution channel ×1.01, a bias +1e-3, another
   LayerNorm epsilon, GELU's tanh approximation instead of erf, and the test suite's older faults),
   each verified with the new default and with the old rule (`--atol 1e-4 --rtol 1e-3`, today's
   formula); printed: caught or not, and the module the localisation names.
3. VGG16: `verify RUN` with the code before this change (the merge base with main, extracted to
   a temporary folder) and with this code, alternating, best of N; then VGG16 with one channel of
   features.19 ×1.01 (the issue's case): caught, localised, and the peak RSS of the processes.

    python benchmarks/noise_floor.py [--models M ...] [--localize] [--skip-faults] [--skip-vgg16]
                                     [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bundle_speed import _WRAPPER as PEAK_WRAPPER

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "onnx_pipeline"]
MODELS = [
    "alexnet",
    "vgg11_bn",
    "vgg16",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "squeezenet1_1",
    "densenet121",
    "googlenet",
    "inception_v3",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mnasnet0_5",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
    "maxvit_t",
]
EXTRA = ["tiny-vgg", f"{ROOT / 'tests' / 'models' / 'control_flow.py'}:build"]
NORM_ACT = f"{ROOT / 'tests' / 'models' / 'norm_act.py'}:build"
OLD_RULE = ["--atol", "1e-4", "--rtol", "1e-3"]


def run(command: list[str], *, pythonpath: Path = ROOT) -> tuple[int, Any, float, float]:
    """(exit code, the JSON report or the last stderr line, seconds, peak RSS in GB of the process tree).

    Through ``bundle_speed``'s wrapper: measured straight from here, the kernel would count this script's
    own peak in the command's.
    """
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *command], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    stderr, _, measured = proc.stderr.rstrip().rpartition("\n")
    maxrss_kb = int(measured.split("__maxrss_kb__=", 1)[1].split()[0])
    try:
        report: Any = json.loads(proc.stdout)
    except json.JSONDecodeError:
        lines = stderr.strip().splitlines()
        report = lines[-1] if lines else proc.stdout[-300:]
    return proc.returncode, report, seconds, maxrss_kb * 1024 / 1e9


def _output(report: Any) -> dict[str, Any]:
    if not isinstance(report, dict):
        return {}
    outputs = report.get("steps", {}).get("verify", {}).get("outputs", [])
    return outputs[0] if outputs else {}


def _verify(report: Any) -> dict[str, Any]:
    return report.get("steps", {}).get("verify", {}) if isinstance(report, dict) else {}


def classifier(model: str, work: Path, localize: bool) -> dict[str, Any]:
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    code, report, seconds, rss = run([*CLI, "export", "-m", model, "-w", "random", "-o", str(out), "--json", "--force"])
    first = _output(report)
    noise = first.get("noise") or {}
    row = {
        "model": model.rsplit("/", 1)[-1],
        "exit": code,
        "verdict": report.get("status") if isinstance(report, dict) else f"error: {report}",
        "rule": _verify(report).get("rule"),
        "scale": first.get("scale"),
        "torch_max": noise.get("torch_max"),
        "torch_mean": noise.get("torch_mean"),
        "floor_max": noise.get("floor_max"),
        "floor_mean": noise.get("floor_mean"),
        "lower_bound_max": noise.get("lower_bound_max"),
        "onnx_max": noise.get("onnx_max"),
        "onnx_mean": noise.get("onnx_mean"),
        "ratio_max": noise.get("ratio_max"),
        "ratio_mean": noise.get("ratio_mean"),
        "old_rule_passes": first.get("smallest_passing_atol", 1.0) <= 1e-4 if first else None,
        "export_seconds": round(seconds, 1),
        "export_peak_rss_gb": round(rss, 2),
        "reference_s": report.get("timings", {}).get("reference") if isinstance(report, dict) else None,
        "reference_float64_s": report.get("timings", {}).get("reference_float64") if isinstance(report, dict) else None,
    }
    if localize and code == 0:
        code, located, seconds, rss = run([*CLI, "verify", str(out), "--localize", "--json"])
        loc = _verify(located).get("localization") or {}
        row.update(
            layer_max_ratio=loc.get("max_ratio"),
            layers_compared=loc.get("compared_layers"),
            layer_divergence=(loc.get("first_divergence") or {}).get("module"),
            localize_seconds=round(seconds, 1),
            localize_rss_gb=round(rss, 2),
        )
    if model != "vgg16":
        shutil.rmtree(out, ignore_errors=True)
    else:
        shutil.move(str(out), work / "vgg16")
    return row


# --------------------------------------------------------------------------- faults


def _edit(source: Path, target: Path, change: Any) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    arrays = {i.name: i for i in model.graph.initializer}
    name, edit = change
    array = numpy_helper.to_array(arrays[name]).copy()
    edit(array)
    arrays[name].CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(model, str(target))
    return target


def _export_variant(factory_change: str, target: Path) -> Path:
    """Export norm_act with one module changed (the fault an exporter could make), as export would."""
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.models.norm_act import build\n"
        "from tests.helpers import export_onnx\n"
        "from onnx_pipeline.config import ModelConfig\n"
        "from onnx_pipeline.sources import load_model\n"
        f"module = load_model(ModelConfig(model={NORM_ACT!r}, weights='random')).module\n"
        f"{factory_change}\n"
        f"export_onnx(module, __import__('pathlib').Path({str(target)!r}), size=16)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    return target


def faults(work: Path) -> list[dict[str, Any]]:
    tiny = work / "tiny"
    run([*CLI, "export", "-m", "tiny-vgg", "-w", "random", "-o", str(tiny), "--json", "--force"])
    clean = tiny / "model.onnx"

    def scale_channel(a: Any) -> None:
        a[0] *= 1.01

    def shift_bias(a: Any) -> None:
        a[0] += 1e-3

    def perturb(a: Any) -> None:
        a.flat[0] += 0.05

    cases: list[tuple[str, Path, str, str]] = [
        (
            "conv channel ×1.01 (tiny-vgg 5)",
            _edit(clean, work / "channel.onnx", ("5.weight", scale_channel)),
            "tiny-vgg",
            "5",
        ),
        ("conv bias +1e-3 (tiny-vgg 2)", _edit(clean, work / "bias.onnx", ("2.bias", shift_bias)), "tiny-vgg", "2"),
        (
            "one weight +0.05 (tiny-vgg 13)",
            _edit(clean, work / "weight.onnx", ("13.weight", perturb)),
            "tiny-vgg",
            "13",
        ),
        (
            "LayerNorm epsilon 1e-5 → 1e-4 (norm_act)",
            _export_variant("module.norm.eps = 1e-4", work / "eps.onnx"),
            NORM_ACT,
            "norm",
        ),
        (
            "GELU tanh instead of erf (norm_act)",
            _export_variant("module.act = torch.nn.GELU(approximate='tanh')", work / "gelu.onnx"),
            NORM_ACT,
            "act",
        ),
    ]
    rows = []
    for name, path, model, changed in cases:
        _, new, _, _ = run([*CLI, "verify", str(path), "-m", model, "-w", "random", "--json"])
        _, old, _, _ = run([*CLI, "verify", str(path), "-m", model, "-w", "random", "--json", *OLD_RULE])
        first = (_verify(new).get("localization") or {}).get("first_divergence") or {}
        rows.append(
            {
                "fault": name,
                "changed": changed,
                "old_rule_caught": isinstance(old, dict) and old.get("status") == "failed",
                "new_rule_caught": isinstance(new, dict) and new.get("status") == "failed",
                "ratio": (_output(new).get("noise") or {}).get("ratio"),
                "localised_to": first.get("module"),
                "node": first.get("onnx_node"),
            }
        )
    return rows


# --------------------------------------------------------------------------- VGG16


def _old_code(work: Path) -> Path:
    """This repository at its merge base with main: the verify this change replaces."""
    base = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True, check=True)
    folder = work / "old"
    folder.mkdir(exist_ok=True)
    archive = subprocess.run(["git", "archive", base.stdout.strip()], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def vgg16(work: Path, repeats: int, old_code: Path | None) -> dict[str, Any]:
    run_dir = work / "vgg16"
    if not run_dir.exists():
        run([*CLI, "export", "-m", "vgg16", "-w", "random", "-o", str(run_dir), "--json"])
    old_code = old_code or _old_code(work)
    old_times, new_times = [], []
    for _ in range(repeats):
        old_times.append(run([*CLI, "verify", str(run_dir), "--json"], pythonpath=old_code)[2])
        new_times.append(run([*CLI, "verify", str(run_dir), "--json"])[2])
    bad = _edit(
        run_dir / "model.onnx", work / "vgg16-bad.onnx", ("features.19.weight", lambda a: a.__setitem__(0, a[0] * 1.01))
    )
    model = ["-m", "vgg16", "-w", "random"]
    _, old, _, _ = run([*CLI, "verify", str(bad), *model, "--json", *OLD_RULE])
    code, new, seconds, rss = run([*CLI, "verify", str(bad), *model, "--json"])
    located = _verify(new).get("localization") or {}
    return {
        "verify_old_s": round(min(old_times), 2),
        "verify_new_s": round(min(new_times), 2),
        "ratio": round(min(new_times) / min(old_times), 2),
        "fault_old_rule_caught": isinstance(old, dict) and old.get("status") == "failed",
        "fault_new_rule_caught": code == 1,
        "fault_ratio": (_output(new).get("noise") or {}).get("ratio"),
        "fault_localised_to": (located.get("first_divergence") or {}).get("module"),
        "fault_verdict": _verify(new).get("verdict"),
        "fault_verify_s": round(seconds, 1),
        "localize_s": located.get("seconds"),
        "fault_peak_rss_gb": round(rss, 2),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "–" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=[*MODELS, *EXTRA])
    parser.add_argument("--localize", action="store_true", help="also walk every layer of each clean export")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--skip-vgg16", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--old-code", type=Path, help="the code before this change (default: the merge base with main)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-noise-floor-"))
    results: dict[str, Any] = {"classifiers": [], "faults": [], "vgg16": None}
    try:
        columns = [
            "model",
            "verdict",
            "torch_max",
            "floor_max",
            "onnx_max",
            "ratio_max",
            "ratio_mean",
            "old_rule_passes",
        ]
        if args.localize:
            columns += ["layer_max_ratio", "layers_compared"]
        print(" | ".join(columns), flush=True)
        for model in args.models:
            row = classifier(model, work, args.localize)
            results["classifiers"].append(row)
            print(" | ".join(_fmt(row.get(c)) for c in columns), flush=True)
            _save(args.json_out, results)
        if not args.skip_faults:
            print("\nfault | old rule caught | new rule caught | ratio | localised to (changed)", flush=True)
            for row in faults(work):
                results["faults"].append(row)
                print(
                    f"{row['fault']} | {row['old_rule_caught']} | {row['new_rule_caught']} | {_fmt(row['ratio'])} | "
                    f"{row['localised_to']} ({row['changed']})",
                    flush=True,
                )
            _save(args.json_out, results)
        if not args.skip_vgg16:
            results["vgg16"] = figures = vgg16(work, args.repeats, args.old_code)
            print("\nvgg16: " + json.dumps(figures, indent=1), flush=True)
            _save(args.json_out, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _save(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
