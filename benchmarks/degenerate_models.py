"""Random weights and vacuous parity: the issue's list of torchvision models, raw and rescaled.

For each model, `onnx-pipeline export --weights random` runs twice in its own process: with the
raw torchvision initialisation (`--no-rescale-random`) and with the default rescaling. Printed:
the reference outputs' range (max |output|), the verdict, and why. A raw model whose outputs are
near zero (or not finite, or constant) must be refused as degenerate instead of passing vacuously;
the rescaled one must pass with a meaningful range.

    python benchmarks/degenerate_models.py [MODEL ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "vit_b_16",
    "inception_v3",
]


def run(model: str, rescale: bool, out: Path) -> dict:
    cli = str(Path(sys.executable).with_name("onnx-pipeline"))
    command = [cli, "export", "-m", model, "-w", "random", "-o", str(out), "--json", "--force"]
    if not rescale:
        command.append("--no-rescale-random")
    proc = subprocess.run(command, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"exit": proc.returncode, "verdict": "error", "why": proc.stderr.strip().splitlines()[-1:]}
    outputs = report.get("steps", {}).get("verify", {}).get("outputs", [])
    first = outputs[0] if outputs else {}
    return {
        "exit": proc.returncode,
        "verdict": report["status"],
        "scale": first.get("scale"),
        "max_abs_error": first.get("max_abs_error"),
        "degenerate": first.get("degenerate"),
        "why": first.get("failures") or report.get("error"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-degenerate-"))
    rows = []
    for model in args.models:
        raw = run(model, False, work / f"{model}-raw")
        rescaled = run(model, True, work / f"{model}-rescaled")
        rows.append({"model": model, "raw": raw, "rescaled": rescaled})
        if not args.json:
            print(
                f"{model:20} raw: {raw['verdict']:6} range {raw.get('scale') or 0:.3g}"
                f"{' (' + raw['degenerate'] + ')' if raw.get('degenerate') else ''} | "
                f"rescaled: {rescaled['verdict']:6} range {rescaled.get('scale') or 0:.3g}, "
                f"max abs error {rescaled.get('max_abs_error') or 0:.3g}",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
