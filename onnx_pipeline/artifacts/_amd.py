"""What the AMD bundles share (Vitis AI DPU, VAIML, Ryzen AI): file names, and the stored calibration set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnx_pipeline.artifacts.base import BuildContext
from onnx_pipeline.files import sha256_file, write_json

TEMPLATES = Path(__file__).resolve().parent.parent / "vitis" / "templates"
MODEL_FP32 = "model_fp32.onnx"
#: where the Vitis AI EP caches its compiled model, relative to the folder the board runner runs in
CACHE_DIR = ".vaip_cache"
#: calibration samples kept in the bundle (for AMD's own quantizer or compiler to re-run on)
MAX_STORED_SAMPLES = 64


def write_calibration(ctx: BuildContext, input_name: str, derived: str) -> None:
    """``calibration/samples.npy`` (the first ``MAX_STORED_SAMPLES`` preprocessed inputs) and its manifest.

    ``derived`` names what the calibration decided ("scales", "positions"), for the warning a synthetic
    set carries.
    """
    assert ctx.data.calibration is not None
    synthetic = bool(ctx.data.calibration_info and ctx.data.calibration_info.get("synthetic"))
    folder = ctx.out / "calibration"
    folder.mkdir(exist_ok=True)
    stored = np.asarray(ctx.data.calibration[:MAX_STORED_SAMPLES], dtype=np.float32)
    np.save(folder / "samples.npy", stored)
    write_json(
        folder / "manifest.json",
        {
            "schema": "onnx-pipeline/vitis-calibration/1",
            "synthetic": synthetic,
            "note": f"SYNTHETIC calibration data: {derived} are not representative of real inputs" if synthetic else "",
            "samples_used": len(ctx.data.calibration),
            "samples_stored": len(stored),
            "file": "samples.npy",
            "shape": list(stored.shape),
            "dtype": "float32",
            "layout": "NCHW, preprocessed (see ../preprocess.json)",
            "input_name": input_name,
            "sha256": sha256_file(folder / "samples.npy"),
        },
    )
