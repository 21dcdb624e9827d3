"""The README.md of a bundle: what each file is, its fidelity, and how to run it on the device."""

from __future__ import annotations

from collections.abc import Sequence

from onnx_pipeline.artifacts.base import ArtifactResult
from onnx_pipeline.bundling.data import BundleData
from onnx_pipeline.manifest import RunManifest
from onnx_pipeline.targets import HardwareTarget

HELDOUT_FILE = "fidelity/heldout.npz"


def bundle_readme(
    target: HardwareTarget,
    run: RunManifest,
    results: Sequence[ArtifactResult],
    data: BundleData,
    default_model: str | None,
) -> str:
    """The README text: builders' own lines, each model's fidelity, and the commands to run and check it."""
    providers = ", ".join(ep.name for ep in target.execution_providers)
    source = run.source.model if run.source else "model"
    lines = [f"# {target.name} bundle: {source}", "", target.description, "", "## Files", ""]
    for result in results:
        lines += result.readme
    lines += ["", "## Fidelity against the fp32 model", ""]
    for result in results:
        for model in result.models:
            fig = model.fidelity.outputs[0] if model.fidelity.outputs else None
            if fig is None:
                continue
            top1 = (
                "top-1 not measurable (reference leads within the model's noise)"
                if fig.top1_agreement is None
                else f"top-1 agreement {fig.top1_agreement:.0%} on {fig.decided_samples} decided samples"
            )
            lines.append(
                f"- `{model.file}` ({model.kind}, {model.precision}): cosine ≥ {fig.min_cosine:.5f}, "
                f"SQNR {fig.sqnr_db:.1f} dB, {top1}"
            )
    if data.calibration_info and data.calibration_info.get("synthetic"):
        lines += ["", "**Warning: int8 was calibrated on SYNTHETIC data; rebuild with calibration images.**"]
    lines += [
        "",
        "- `manifest.json`: inputs/outputs, preprocessing, labels, providers and options, sha256 of every file",
        f"- `{HELDOUT_FILE}`: held-out inputs and fp32 reference outputs for re-checking on the device",
    ]
    if not target.execution_providers:  # no onnxruntime model: the builders' own lines say how to run it
        lines += ["", "Check the bundle with `onnx-pipeline verify <this folder>` (hashes and fidelity)."]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Run it",
        "",
        "```python",
        "import onnxruntime as ort",
        f"# providers, in order: {providers} (options in manifest.json → execution_providers)",
        f'session = ort.InferenceSession("{default_model or run.model_file}", providers=[...])',
        "```",
        "",
        "Or with onnx-pipeline's runtime: `Bundle.load(path).predict(image)`; check the bundle with",
        "`onnx-pipeline verify <this folder>` (hashes and fidelity).",
    ]
    return "\n".join(lines) + "\n"
