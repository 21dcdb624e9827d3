"""Benchmark: per-layer sensitivity and automatic fallback on VGG16 (random weights, the sample photographs).

1. Export VGG16 (random weights) once; build the ``cpu-x86_64`` bundle and one Vitis AI bundle
   (``vitis-ai-kv260``) calibrated on the sample photographs. Each lowered model's sensitivity analysis
   runs inside its builder: its time against the bundle's own build time (the rest of it) is the ratio
   (goal, issue 9: at most 2×).
2. With a deliberately tight threshold (each target's int8 ``min_sqnr_db`` set ``--margin`` dB above what
   plain int8 reached, ``[fallback] max_float_layers_fraction = --fraction``), the fallback's result:
   layers kept in float, fidelity before and after, and CPU latency before and after (the int8 model
   on onnxruntime's CPU provider, batch 1, median of ``--runs``; for the DPU board: the work moved to
   the CPU and the extra DPU subgraphs, as the bundle records them).

    python benchmarks/sensitivity.py [--keep DIR] [--json]

Run it under ``flock /tmp/onnx-pipeline-heavy.lock`` on a shared machine (VGG16-size: minutes).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from onnx_pipeline.config import BundleConfig  # noqa: E402
from onnx_pipeline.errors import BundleError  # noqa: E402
from onnx_pipeline.steps.bundle import SharedInputs, build_bundle  # noqa: E402
from onnx_pipeline.targets import load_target  # noqa: E402

TARGETS = {"cpu-x86_64": ("int8-qdq", "model.int8.onnx"), "vitis-ai-kv260": ("vitis-ai", "model_xint8_qdq.onnx")}
GOAL_RATIO = 2.0


def export_vgg16(folder: Path, photos: Path) -> Path:
    from onnx_pipeline import api

    run = folder / "run"
    api.export("vgg16", output=run, weights="random", images=photos, verify=False, force=True)
    return run


def latency_ms(model: Path, shape: tuple[int, ...], runs: int) -> float:
    """Median latency (ms) of ``model`` on onnxruntime's CPU provider, batch 1."""
    from onnx_pipeline.runtime.session import create_session

    session = create_session(model)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, *shape[1:]), dtype=np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def tight_profile(name: str, folder: Path, min_sqnr: float, fraction: float) -> Path:
    text = load_target(name).source.read_text(encoding="utf-8")
    text = re.sub(r'^name = ".*"$', f'name = "{name}-tight"', text, count=1, flags=re.M)
    head, int8 = text.split("[fidelity.int8]")
    int8 = re.sub(r"min_sqnr_db = [0-9.]+", f"min_sqnr_db = {min_sqnr:.2f}", int8, count=1)
    int8 = int8.replace("max_float_layers_fraction = 0.1", f"max_float_layers_fraction = {fraction}")
    path = folder / f"{name}-tight.toml"
    path.write_text(f"{head}[fidelity.int8]{int8}", encoding="utf-8")
    return path


def plain(run: Path, name: str, config: BundleConfig, shared: SharedInputs) -> dict[str, Any]:
    kind, _ = TARGETS[name]
    result = build_bundle(run, load_target(name), config, shared=shared)
    section = result.artifacts[kind]
    seconds = result.timings[f"{kind}:sensitivity"]
    build = result.timings["total"] - seconds
    model = next(m for m in result.models if m.kind == kind)
    worst = min(model.fidelity.outputs, key=lambda o: o.sqnr_db)
    return {
        "target": name,
        "build_s": round(build, 2),
        "sensitivity_s": seconds,
        "ratio": round(seconds / build, 3),
        "sqnr_db": worst.sqnr_db,
        "lowered_layers": len(section["sensitivity"]["layers"]),
        "top": [
            {k: x[k] for k in ("layer", "sqnr_db", "sqnr_drop_db", "effect")}
            for x in section["sensitivity"]["layers"][:3]
        ],
    }


def tight(
    run: Path, name: str, figures: dict[str, Any], args: argparse.Namespace, shared: SharedInputs
) -> dict[str, Any]:
    kind, file = TARGETS[name]
    profile = tight_profile(name, run.parent, figures["sqnr_db"] + args.margin, args.fraction)
    target = load_target(profile)
    config = BundleConfig(calibration_images=args.photos, force=True)
    start = time.perf_counter()
    try:
        result = build_bundle(run, target, config, shared=shared)
        section, passed = result.artifacts[kind], True
    except BundleError as exc:
        section, passed = _section(exc.result, kind), False
    out: dict[str, Any] = {
        "target": target.name,
        "min_sqnr_db": round(figures["sqnr_db"] + args.margin, 2),
        "passed": passed,
        "seconds": round(time.perf_counter() - start, 1),
        "kept_in_float": [x["layer"] for x in section.get("kept_in_float") or []],
        "fallback": {k: v for k, v in (section.get("fallback") or {}).items() if k != "trials"},
        "trials": len((section.get("fallback") or {}).get("trials") or []),
        "fallback_cost": section.get("fallback_cost"),
    }
    if passed and name == "cpu-x86_64":
        shape = (1, 3, 224, 224)
        out["latency_ms_before"] = round(latency_ms(run / "bundles" / name / file, shape, args.runs), 2)
        out["latency_ms_after"] = round(latency_ms(run / "bundles" / target.name / file, shape, args.runs), 2)
    return out


def _section(result: Any, kind: str) -> dict[str, Any]:
    if isinstance(result, dict):
        return result
    artifacts = getattr(result, "artifacts", None) or {}
    return dict(artifacts.get(kind) or {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--margin", type=float, default=1.0, help="dB above plain int8's SQNR for the tight run")
    parser.add_argument("--fraction", type=float, default=0.2, help="[fallback] max_float_layers_fraction")
    parser.add_argument("--runs", type=int, default=10, help="latency runs per model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="onnx-pipeline-sensitivity-"))
    folder.mkdir(parents=True, exist_ok=True)
    args.photos = folder / "photos"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "sample_photos.py"), str(args.photos)], check=True)
    start = time.perf_counter()
    run = export_vgg16(folder, args.photos)
    print(f"VGG16 exported in {time.perf_counter() - start:.0f} s → {run}", flush=True)
    shared = SharedInputs(run)
    config = BundleConfig(calibration_images=args.photos, force=True)
    report: dict[str, Any] = {"plain": [], "tight": []}
    for name in TARGETS:
        figures = plain(run, name, config, shared)
        report["plain"].append(figures)
        print(
            f"{name}: build {figures['build_s']:.1f} s, sensitivity {figures['sensitivity_s']:.1f} s, "
            f"ratio {figures['ratio']:.2f} (goal ≤ {GOAL_RATIO}); int8 SQNR {figures['sqnr_db']:.2f} dB; "
            f"{figures['lowered_layers']} lowered layers, most sensitive: "
            + ", ".join(
                f"{x['layer']} ({x['effect'] if x['effect'] is None else round(x['effect'], 2)} dB)"
                for x in figures["top"]
            ),
            flush=True,
        )
        fallback = tight(run, name, figures, args, shared)
        report["tight"].append(fallback)
        print(
            f"{name}, tight (min SQNR {fallback['min_sqnr_db']} dB): " + json.dumps(fallback, default=str), flush=True
        )
    if args.json:
        print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
