"""Re-check a bundle on disk: its manifest and hashes, each artifact's own files, each model's fidelity.

The bundle is read through ``BundleManifest.read``, the same trust boundary ``predict``, ``bench``
and ``serve`` use. Here a folder that fails it is a failed check (``BundleError``, exit 1), not bad
input: answering that question is what ``verify`` is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_pipeline.artifacts import available_kinds, load_builder
from onnx_pipeline.artifacts.base import run_batches
from onnx_pipeline.bundling.fidelity import Checked, FidelityResult, judge
from onnx_pipeline.errors import BundleError, InputError, IntegrityError, first_line
from onnx_pipeline.manifest import BUNDLE_UNLISTED, MANIFEST, BundleManifest, ModelRecord
from onnx_pipeline.runtime.session import CHECK, create_session
from onnx_pipeline.steps.bundle import fidelity_summary
from onnx_pipeline.targets import FidelityThresholds


@dataclass(frozen=True)
class BundleVerifyResult(Checked):
    """A bundle re-checked on disk: hashes, artifact checks, and fidelity re-run."""

    bundle_dir: Path
    target: str
    digest: str
    files_checked: int
    models: tuple[FidelityResult, ...]
    #: each artifact kind's own check (e.g. the Triton config parsed back), by kind
    checks: Mapping[str, Any] = field(default_factory=dict)
    #: per lowered artifact kind, as recorded at build time: its most sensitive layers and the layers kept in float
    sensitivity: Mapping[str, Any] = field(default_factory=dict)
    unlisted_files: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()

    __json_extra__ = ("passed", "summary")

    @property
    def summary(self) -> str:
        """One line for the CLI: files checked and each model's worst figures."""
        return f"{self.files_checked} files match their sha256; " + fidelity_summary(
            self.bundle_dir, list(self.models), self.failures
        )


def verify_bundle(bundle_dir: Path) -> BundleVerifyResult:
    """Re-check a bundle; a damaged one raises ``BundleError`` naming every problem (models are not run then).

    A fidelity shortfall raises ``BundleError`` whose ``.result`` holds every figure.
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST).is_file():
        raise BundleError(f"{bundle_dir} has no {MANIFEST}: is it a bundle written by onnx-pipeline?")
    try:
        manifest = BundleManifest.read(bundle_dir)
    except IntegrityError as exc:
        raise BundleError(f"bundle {bundle_dir} is damaged: {exc.message}") from None
    listed = set(manifest.files) | set(BUNDLE_UNLISTED)
    unlisted = tuple(sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()))
    unlisted = tuple(p for p in unlisted if p not in listed)
    checks = _artifact_checks(manifest)
    inputs, reference = _heldout(manifest)
    names = [o.name for o in manifest.outputs]
    results = []
    for record in manifest.models:
        recorded = record.fidelity or {}
        thresholds = _thresholds(recorded.get("thresholds"), bundle_dir)
        outputs, provider = _run_model(manifest, record, inputs)
        data = str(recorded.get("data", "held-out inputs"))
        results.append(
            judge(record.file, record.precision, names, reference, outputs, thresholds, data, provider=provider)
        )
    failures = tuple(f for r in results for f in r.failures)
    result = BundleVerifyResult(
        bundle_dir=bundle_dir,
        target=manifest.target.name,
        digest=str(manifest.digest),
        files_checked=len(manifest.files),
        models=tuple(results),
        checks=checks,
        sensitivity=recorded_sensitivity(manifest.artifacts),
        unlisted_files=unlisted,
        failures=failures,
    )
    if failures:
        raise BundleError(f"bundle {bundle_dir} fails its fidelity check: " + "; ".join(failures), result=result)
    return result


def recorded_sensitivity(artifacts: Mapping[str, Any], top: int = 5) -> dict[str, Any]:
    """Each artifact's recorded sensitivity (its ``top`` layers) and layers kept in float (untrusted: types checked)."""
    found: dict[str, Any] = {}
    for kind, section in artifacts.items():
        if not isinstance(section, Mapping) or not isinstance(section.get("sensitivity"), Mapping):
            continue
        layers = section["sensitivity"].get("layers")
        layers = [x for x in layers if isinstance(x, Mapping)] if isinstance(layers, list) else []
        keys = ("layer", "op_type", "sqnr_db", "cosine", "sqnr_drop_db", "effect")
        kept = section.get("kept_in_float")
        found[kind] = {
            "metric": section["sensitivity"].get("metric"),
            "output_sqnr_db": section["sensitivity"].get("output_sqnr_db"),
            "layers": [{k: x.get(k) for k in keys} for x in layers[:top]],
            "kept_in_float": [x.get("layer") for x in kept if isinstance(x, Mapping)]
            if isinstance(kept, list)
            else None,
        }
    return found


def _artifact_checks(manifest: BundleManifest) -> dict[str, Any]:
    """Each artifact kind's own ``verify_section`` (a builder without one has nothing to add)."""
    checks: dict[str, Any] = {}
    known = set(available_kinds())
    for kind, section in manifest.artifacts.items():
        if kind not in known or not isinstance(section, Mapping):
            continue
        check = getattr(load_builder(kind), "verify_section", None)
        if check is not None:
            checks[kind] = check(manifest, section)
    return checks


def _run_model(manifest: BundleManifest, record: ModelRecord, inputs: np.ndarray) -> tuple[list[np.ndarray], str]:
    """Run one bundle model on ``inputs``: onnxruntime on the CPU, or its builder's ``run_model`` (TorchScript)."""
    path = manifest.path(record.file, what="the model")
    if record.format in ("onnx", "ort"):
        session = create_session(path, settings=CHECK)
        return run_batches(session, inputs), str(session.get_providers()[0])
    runner = getattr(load_builder(record.kind), "run_model", None) if record.kind in available_kinds() else None
    if runner is None:
        raise BundleError(f"{record.file} is a {record.format!r} model that no artifact kind of this tool runs")
    outputs, provider = runner(path, inputs)
    return list(outputs), str(provider)


def _heldout(manifest: BundleManifest) -> tuple[np.ndarray, list[np.ndarray]]:
    heldout = manifest.heldout or {}
    path = manifest.path(str(heldout.get("file", "fidelity/heldout.npz")), what="the held-out inputs")
    try:
        with np.load(path, allow_pickle=False) as stored:
            inputs = np.asarray(stored["inputs"], dtype=np.float32)
            reference = [np.asarray(stored[f"reference_{i}"]) for i in range(len(manifest.outputs))]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise InputError(
            f"{path} is not a held-out archive onnx-pipeline wrote ({first_line(exc)}): rebuild the bundle"
        ) from None
    if inputs.ndim < 2 or any(len(r) != len(inputs) for r in reference):
        raise InputError(f"{path} holds inputs and references of different lengths: rebuild the bundle")
    return inputs, reference


def _thresholds(recorded: Any, where: Path) -> FidelityThresholds:
    keys = ("min_cosine", "min_sqnr_db", "min_top1_agreement", "min_top5_agreement")
    if not isinstance(recorded, Mapping) or set(recorded) != set(keys):
        raise InputError(f"{where}/{MANIFEST}: a model's fidelity.thresholds must hold {', '.join(keys)}")
    values = {k: recorded[k] for k in keys}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()):
        raise InputError(f"{where}/{MANIFEST}: fidelity thresholds must be numbers")
    return FidelityThresholds(**{k: float(v) for k, v in values.items()})
