"""Our AMD quantizer against AMD Quark (separate .venv-quark, ``make quark-venv``): scales and outputs agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUARK_PYTHON = ROOT / ".venv-quark" / "bin" / "python"


@pytest.mark.slow
def test_quark_agrees_on_xint8_vint8_a8w8() -> None:
    if not QUARK_PYTHON.is_file():
        pytest.skip(f"AMD Quark is not installed in {QUARK_PYTHON.parent.parent}: run `make quark-venv`")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quark_agreement.py"), "--configs", "XINT8,VINT8,A8W8"],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["config"]: r for r in json.loads(done.stdout)}
    for config, result in results.items():
        equal, total = (int(x) for x in result["scales_equal"].split("/"))
        assert total >= 17 and equal >= total - 1, (config, result["differing"])
        assert result["cosine_ours_vs_quark"] > 0.9999, (config, result)
        assert result["top1_agreement_ours_vs_quark"] == 1.0, config
    # the one tolerated difference is a position step on a layout op's output, never a compute tensor
    for config in ("XINT8", "VINT8"):
        assert set(results[config]["differing"]) <= {"flat"}, results[config]["differing"]
