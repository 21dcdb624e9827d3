"""The sections of a bundle's report, from its ``BundleManifest``.

Read from the manifest when present, said "not measured" (or "not recorded") when not:

- each model's fidelity (``models[].fidelity``) against the thresholds it was judged with;
- per-layer sensitivity: ``artifacts[kind]["sensitivity"]``, a list of layers most sensitive first
  (or ``{"metric": key, "layers": [...]}``), each ``{"layer": name, <figure>: number, ...}``;
  the figure drawn is ``metric`` when given, else the first of ``SENSITIVITY_FIGURES`` present;
- layers kept in float: ``artifacts[kind]["kept_in_float"]`` (or ``["fallback"]["kept_in_float"]``),
  a list of names or of ``{"layer": name, "reason": ..., ...}``;
- the DPU partition summary of a Vitis AI bundle (``artifacts["vitis-ai"]["dpu_report"]``, and the
  per-node placements of ``dpu_report.json`` when the bundle lists it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from onnx_pipeline.errors import IntegrityError
from onnx_pipeline.manifest import BundleManifest
from onnx_pipeline.report_html import plots
from onnx_pipeline.report_html.data import dig, finite, flag, integer, items, num, obj, text
from onnx_pipeline.report_html.html import Html, facts, fmt, image, note, ok, section, table, tag
from onnx_pipeline.report_html.run import labels_line

#: figures a sensitivity entry may carry, in the order the plot prefers them
SENSITIVITY_FIGURES = ("effect", "sensitivity", "output_sqnr_db", "sqnr_db", "cosine")
DPU_REPORT_FILE = "dpu_report.json"
_METRICS = (
    ("min cosine", "min_cosine", "min_cosine"),
    ("SQNR (dB)", "sqnr_db", "min_sqnr_db"),
    ("top-1 agreement", "top1_agreement", "min_top1_agreement"),
    ("top-5 agreement", "top5_agreement", "min_top5_agreement"),
)


def bundle_sections(manifest: BundleManifest) -> list[Html]:
    """The bundle's own sections (the bench section is added by the caller)."""
    return [
        _overview(manifest),
        _fidelity(manifest),
        _sensitivity(manifest.artifacts),
        _kept_in_float(manifest.artifacts),
        _dpu(manifest),
    ]


def _overview(manifest: BundleManifest) -> Html:
    target = manifest.target
    providers = ", ".join(text(obj(p).get("name")) for p in manifest.execution_providers)
    return section(
        "bundle",
        "Bundle",
        facts(
            [
                ("target", f"{target.name}: {target.description}" if target.description else target.name),
                ("models", ", ".join(f"{m.file} ({m.precision})" for m in manifest.models)),
                ("default model", manifest.default_model or "none"),
                ("execution providers", providers or "none"),
                ("batch", "dynamic" if manifest.dynamic_batch else "static"),
                ("labels", labels_line(manifest.labels)),
                ("held-out inputs", _heldout_line(manifest.heldout)),
                ("run model sha256", text(manifest.run.get("model_sha256"), "not recorded")),
            ]
        ),
    )


def _heldout_line(heldout: Mapping[str, Any] | None) -> str:
    held = obj(heldout)
    if not held:
        return "not recorded"
    what = "synthetic" if flag(held.get("synthetic")) else "photographs"
    return f"{fmt(num(held.get('samples')))} samples ({what})"


def _worst(fidelity: Mapping[str, Any], key: str) -> float | None:
    values = [num(obj(o).get(key)) for o in items(fidelity.get("outputs"))]
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _fidelity(manifest: BundleManifest) -> Html:
    models = [m.file for m in manifest.models]
    metrics: dict[str, list[plots.Metric]] = {label: [] for label, _, _ in _METRICS}
    rows = []
    for record in manifest.models:
        fidelity = obj(record.fidelity)
        thresholds = obj(fidelity.get("thresholds"))
        figures = []
        for label, key, limit in _METRICS:
            value = _worst(fidelity, key)
            metrics[label].append(plots.Metric(value, finite(thresholds.get(limit))))
            figures.append(f"{fmt(value, 6)} (≥ {fmt(num(thresholds.get(limit)), 4)})")
        decided = [integer(obj(o).get("decided_samples")) for o in items(fidelity.get("outputs"))]
        rows.append(
            [
                record.file,
                record.kind,
                record.precision,
                *figures,
                fmt(min((d for d in decided if d is not None), default=None)),
                text(fidelity.get("provider"), "–"),
                ok(None if not fidelity else not items(fidelity.get("failures"))),
            ]
        )
    if not any(obj(m.fidelity) for m in manifest.models):
        return section("fidelity", "Fidelity against the thresholds", note("not measured"))
    headers = ("model", "kind", "precision", *(label for label, _, _ in _METRICS), "decided", "provider", "result")
    intro = tag(
        "p",
        "Each model against the run's fp32 model on the held-out inputs (worst output); the dark bar is the "
        "threshold the target sets for that model. Class agreement counts only decided samples (the reference's "
        "top-1 lead above the model's noise); with none decided it is not measurable (n/a, –) and not judged.",
        cls="muted",
    )
    plot = image(plots.fidelity(models, metrics), "fidelity of each model against its thresholds")
    return section("fidelity", "Fidelity against the thresholds", intro, plot, table(headers, rows))


def _sensitivity_layers(section_data: Mapping[str, Any]) -> tuple[str | None, list[Mapping[str, Any]]]:
    raw = section_data.get("sensitivity")
    layers = [obj(x) for x in (items(raw) or items(obj(raw).get("layers")))]
    layers = [x for x in layers if _layer_name(x)]
    metric = text(obj(raw).get("metric")) or None
    return metric, layers


def _layer_name(layer: Mapping[str, Any]) -> str:
    return text(layer.get("layer")) or text(layer.get("name")) or text(layer.get("node"))


def _kept(section_data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = section_data.get("kept_in_float")
    if raw is None:
        raw = dig(section_data, "fallback", "kept_in_float")
    return [{"layer": x} if isinstance(x, str) else obj(x) for x in items(raw)]


def _sensitivity(artifacts: Mapping[str, Any]) -> Html:
    body: list[Any] = []
    for kind, data in artifacts.items():
        metric, layers = _sensitivity_layers(obj(data))
        if not layers:
            continue
        figure = metric or next((f for f in SENSITIVITY_FIGURES if any(num(x.get(f)) is not None for x in layers)), "")
        kept = {_layer_name(x) for x in _kept(obj(data))}
        bars = [(_layer_name(x), v, _layer_name(x) in kept) for x in layers if (v := finite(x.get(figure)))
                is not None]  # fmt: skip
        body.append(tag("h3", f"{kind}: {len(layers)} layers, most sensitive first"))
        if bars:
            title = f"{kind}: {figure} per layer" + (" (red: kept in float)" if kept else "")
            body.append(image(plots.ranked_bars(bars, figure, title), f"per-layer sensitivity of {kind}"))
        columns = sorted({k for x in layers for k, v in x.items() if num(v) is not None})[:6]
        rows = [[_layer_name(x), *(fmt(num(x.get(c))) for c in columns)] for x in layers[:30]]
        body.append(table(("layer", *columns), rows, numeric=range(1, len(columns) + 1)))
    if not body:
        body.append(note("not measured (this bundle records no per-layer sensitivity)"))
    return section("sensitivity", "Per-layer sensitivity", *body)


def _kept_in_float(artifacts: Mapping[str, Any]) -> Html:
    rows = []
    recorded = False
    for kind, data in artifacts.items():
        section_data = obj(data)
        recorded = recorded or "kept_in_float" in section_data or "kept_in_float" in obj(section_data.get("fallback"))
        for layer in _kept(section_data):
            extra = "; ".join(f"{k}: {fmt(v) if num(v) is not None else text(v)}" for k, v in layer.items()
                              if k not in ("layer", "name", "reason"))  # fmt: skip
            rows.append([kind, _layer_name(layer), text(layer.get("reason")), extra])
    if rows:
        return section("kept-in-float", "Layers kept in float", table(("artifact", "layer", "why", "details"), rows))
    message = "none: every layer was lowered" if recorded else "not recorded (built without automatic fallback)"
    return section("kept-in-float", "Layers kept in float", note(message))


def _placements(manifest: BundleManifest) -> list[str]:
    """Each node's device in graph order, from ``dpu_report.json`` when the bundle lists it (hashed)."""
    if DPU_REPORT_FILE not in manifest.files:
        return []
    try:
        path = manifest.path(DPU_REPORT_FILE, what="the DPU report")
        if path.stat().st_size > 64 << 20:
            return []
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, IntegrityError):
        return []
    devices = [text(obj(p).get("device")) for p in items(obj(data).get("placements"))]
    return devices if all(d in ("DPU", "CPU") for d in devices) else []


def _segments(devices: Sequence[str]) -> list[tuple[str, int]]:
    return [(device, len(list(run))) for device, run in groupby(devices)]


def _dpu(manifest: BundleManifest) -> Html:
    title = "DPU partitions (Vitis AI)"
    summary = obj(dig(manifest.artifacts, "vitis-ai", "dpu_report"))
    if not summary:
        return section("dpu", title, note("not applicable: this bundle has no Vitis AI model"))
    pairs = [
        ("DPU", f"{text(summary.get('dpu'), '?')} on {text(summary.get('board'), '?')}"),
        ("nodes", f"{fmt(num(summary.get('on_dpu')))} of {fmt(num(summary.get('nodes')))} predicted on the DPU, "
                  f"{fmt(num(summary.get('on_cpu')))} on the CPU"),
    ]  # fmt: skip
    devices = _placements(manifest)
    body: list[Any] = []
    if devices:
        segments = _segments(devices)
        dpu_parts = sum(1 for d, _ in segments if d == "DPU")
        pairs.append(
            (
                "partitions",
                f"{dpu_parts} DPU subgraph(s), {len(segments) - dpu_parts} CPU segment(s) "
                f"in graph order: " + " → ".join(f"{d}×{n}" for d, n in segments[:24]),
            )
        )
        body.append(image(plots.placement_strip(devices, "predicted device per node"), "DPU/CPU placement strip"))
    cpu = [obj(n) for n in items(summary.get("cpu_nodes"))]
    rows = [[text(n.get("name")), text(n.get("op_type")), text(n.get("rule"))] for n in cpu]
    body.append(table(("node on the CPU", "op", "rule"), rows) if rows else note("every node is predicted on the DPU"))
    caveat = note("A prediction from UG1414's operator limits, not the compiler's verdict (see dpu_report.md).")
    return section("dpu", title, facts(pairs), *body, caveat)
