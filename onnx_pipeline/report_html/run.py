"""The sections of a run folder's report, from its ``RunManifest`` (``verification`` read field by field).

What is shown when present, and said "not measured" when not: the error histograms
(``outputs[].error_histograms``, recorded by verify since this report exists), the noise floor
(``outputs[].noise``: PyTorch float32's own error against a float64 run, and the ONNX model's
ratio to it) and the first-divergence localisation (``localization``), both from the
verification issue (#8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from onnx_pipeline.manifest import RunManifest
from onnx_pipeline.report_html import plots
from onnx_pipeline.report_html.data import dig, finite, flag, integer, items, num, obj, text
from onnx_pipeline.report_html.html import (
    Html,
    facts,
    fmt,
    image,
    note,
    ok,
    ratio,
    section,
    table,
    tag,
    verdict,
)

#: outputs drawn as histograms (a model with more outputs lists the rest in the parity table only)
MAX_HISTOGRAMS = 6
NOT_VERIFIED = "this run folder was exported with --no-verify: nothing was measured"


def run_sections(manifest: RunManifest) -> list[Html]:
    """Every section of a run folder's report, in reading order."""
    check = obj(manifest.verification)
    outputs = [obj(o) for o in items(check.get("outputs"))]
    return [
        _verdict(manifest, check),
        _parity(check, outputs),
        _histograms(check, outputs),
        _noise_floor(check, outputs),
        _localization(check),
        timings_section(manifest.timings, "timings", "Timings per stage"),
    ]


def _failures(check: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]]) -> list[str]:
    recorded = items(check.get("failures"))
    if recorded:
        return [text(f) for f in recorded]
    named = [f"{text(o.get('name'))}: {text(f)}" for o in outputs for f in items(o.get("failures"))]
    return [text(e) for e in items(check.get("errors"))] + named


def _verdict(manifest: RunManifest, check: Mapping[str, Any]) -> Html:
    source = manifest.source
    model = facts(
        [
            ("model", f"{source.model} ({source.kind}), weights {source.weights}" if source else "not recorded"),
            ("exporter", text(manifest.exporter.get("used"), "not recorded")),
            ("opset / IR version", f"{manifest.opset} / {manifest.ir_version}"),
            ("input", ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in manifest.inputs)),
            ("outputs", ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in manifest.outputs)),
            ("simplify", _simplify_line(manifest.simplify)),
            ("labels", labels_line(manifest.labels)),
        ]
    )
    if not check:
        return section("verdict", "Verdict", tag("p", verdict(None, word="NOT VERIFIED")), note(NOT_VERIFIED), model)
    passed = flag(check.get("passed"))
    sentence = text(check.get("verdict")) or (
        "every output is within tolerance of PyTorch eager" if passed else "parity failed"
    )
    tolerances = obj(check.get("tolerances"))
    rule = text(check.get("rule"), "scale-aware (atol × scale + rtol × |ref|)")
    details = facts(
        [
            (
                "rule",
                rule
                + (
                    f" — float64 unavailable: {text(check['float64_unavailable'])}"
                    if text(check.get("float64_unavailable"))
                    else ""
                ),
            ),
            ("tolerances", ", ".join(f"{k} {fmt(num(v))}" for k, v in tolerances.items() if num(v) is not None)),
            ("provider", ", ".join(text(p) for p in items(check.get("providers"))[:1]) or "not recorded"),
            ("sample sets", ", ".join(text(obj(s).get("name")) for s in items(check.get("samples")))),
            ("verification time", f"{fmt(finite(check.get('seconds')), 3)} s"),
        ]
    )
    failures = _failures(check, [obj(o) for o in items(check.get("outputs"))])
    listed = tag("ul", *(tag("li", f) for f in failures)) if failures else Html("")
    return section("verdict", "Verdict", tag("p", verdict(passed), " ", sentence), listed, details, model)


def labels_line(labels: Sequence[str] | None) -> str:
    """``N classes: first, second, third, …`` or "none"."""
    if not labels:
        return "none"
    shown = ", ".join(labels[:5])
    return f"{len(labels)} classes: {shown}" + (", …" if len(labels) > 5 else "")


def _simplify_line(simplify: Mapping[str, Any] | None) -> str:
    if not simplify:
        return "not run"
    before, after = obj(simplify.get("before")), obj(simplify.get("after"))
    counts = ""
    if integer(before.get("nodes")) is not None and integer(after.get("nodes")) is not None:
        counts = f": {before['nodes']} → {after['nodes']} nodes"
    kept = "applied" if flag(simplify.get("applied")) else "not applied"
    return f"{text(simplify.get('backend'), '?')} {kept}{counts}; {text(simplify.get('reason'))}".rstrip("; ")


_PARITY_COLUMNS = (
    "output",
    "shape",
    "scale",
    "max abs",
    "mean abs",
    "max rel",
    "min cosine",
    "top-1",
    "top-5",
    "smallest passing atol",
    "result",
)


def _parity(check: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]]) -> Html:
    if not check:
        return section("parity", "Parity per output", note(NOT_VERIFIED))
    rows = [
        [
            text(o.get("name")),
            str([integer(d) if integer(d) is not None else text(d) for d in items(o.get("shape"))]),
            fmt(num(o.get("scale"))),
            fmt(num(o.get("max_abs_error"))),
            fmt(num(o.get("mean_abs_error"))),
            fmt(num(o.get("max_rel_error"))),
            fmt(num(o.get("min_cosine")), 8),
            fmt(num(o.get("top1_agreement"))),
            fmt(num(o.get("top5_agreement"))),
            fmt(num(o.get("smallest_passing_atol"))),
            ok(flag(o.get("passed"))),
        ]
        for o in outputs
    ]
    per_set = [
        [text(o.get("name")), name, fmt(num(value))]
        for o in outputs
        for name, value in obj(o.get("per_sample_set_max_abs")).items()
    ]
    body: list[Any] = [table(_PARITY_COLUMNS, rows, numeric=range(2, 10))]
    if per_set:
        body += [
            tag("h3", "Largest error per sample set"),
            table(("output", "sample set", "max abs"), per_set, numeric=(2,)),
        ]
    return section("parity", "Parity per output", *body)


def _histogram(output: Mapping[str, Any], tolerances: Mapping[str, Any]) -> plots.Histogram | None:
    recorded = obj(output.get("error_histograms"))
    edges = [finite(e) for e in items(recorded.get("edges_log10"))]
    if len(edges) < 2 or any(e is None for e in edges):
        return None
    sets: dict[str, tuple[list[int], int, int]] = {}
    for name, entry in obj(recorded.get("sets")).items():
        counts = [integer(c) for c in items(obj(entry).get("counts"))]
        if len(counts) != len(edges) - 1 or any(c is None or c < 0 for c in counts):
            return None
        sets[str(name)] = (
            [int(c or 0) for c in counts],
            integer(entry.get("zeros")) or 0,
            integer(entry.get("elements")) or 0,
        )
    lines = []
    atol, scale = finite(tolerances.get("atol")), finite(output.get("scale"))
    if atol is not None and scale is not None:
        lines.append((atol * scale, "allowed at |ref| = 0 (atol × scale)"))
    floor = finite(dig(output, "noise", "floor_max"))
    if floor is not None:
        lines.append((floor, "PyTorch float32's own max error (noise floor)"))
    return plots.Histogram(text(output.get("name")), [e or 0.0 for e in edges], sets, lines) if sets else None


def _histograms(check: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]]) -> Html:
    title = "Error histograms per sample set"
    if not check:
        return section("histograms", title, note(NOT_VERIFIED))
    tolerances = obj(check.get("tolerances"))
    body: list[Any] = []
    for output in outputs[:MAX_HISTOGRAMS]:
        hist = _histogram(output, tolerances)
        name = text(output.get("name"))
        if hist is None:
            body.append(
                note(
                    f"output {name}: not measured (this run folder was verified before error "
                    "histograms were recorded: run onnx-pipeline export again)"
                )
            )
        else:
            body.append(image(plots.error_histogram(hist), f"error histogram of output {name}"))
    if len(outputs) > MAX_HISTOGRAMS:
        body.append(note(f"{len(outputs) - MAX_HISTOGRAMS} more outputs: see the parity table"))
    if not outputs:
        body.append(note("no output was compared (see the verdict)"))
    intro = tag(
        "p", "|ONNX − PyTorch eager| of every output element, per sample set, as measured by verify.", cls="muted"
    )
    return section("histograms", title, intro, *body)


def _noise_floor(check: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]]) -> Html:
    title = "Noise floor"
    rows = []
    for o in outputs:
        noise = obj(o.get("noise")) or obj(o.get("noise_floor"))
        if not noise:
            continue
        rows.append(
            [
                text(o.get("name")),
                fmt(num(noise.get("torch_max"))),
                fmt(num(noise.get("floor_max"))),
                fmt(num(noise.get("onnx_max"))),
                fmt(num(noise.get("floor_mean"))),
                fmt(num(noise.get("onnx_mean"))),
                ratio(num(noise.get("ratio"))),
                ratio(num(noise.get("factor"))),
                ok(flag(noise.get("within"))),
            ]
        )
    if not rows:
        why = text(check.get("float64_unavailable"))
        return section("noise-floor", title, note("not measured" + (f": {why}" if why else "")))
    headers = (
        "output",
        "PyTorch fp32 max err",
        "floor (max)",
        "ONNX max err",
        "floor (mean)",
        "ONNX mean err",
        "ratio",
        "allowed",
        "result",
    )
    intro = tag(
        "p", "Errors against a float64 PyTorch run: the ONNX model's, in units of PyTorch float32's own.", cls="muted"
    )
    return section("noise-floor", title, intro, table(headers, rows, numeric=range(1, 8)))


def _ratio(layer: Mapping[str, Any]) -> float | None:
    value = num(layer.get("ratio"))
    return num(dig(layer, "noise", "ratio")) if value is None else value


def _layer_row(label: str, layer: Mapping[str, Any]) -> list[Any]:
    return [
        label,
        text(layer.get("onnx_node")),
        text(layer.get("module")),
        text(layer.get("module_type")),
        fmt(num(layer.get("max_abs_error"))),
        ratio(_ratio(layer)),
        ok(flag(layer.get("within"))),
    ]


def _localization(check: Mapping[str, Any]) -> Html:
    title = "Localisation"
    located = obj(check.get("localization"))
    if not located:
        return section(
            "localization", title, note("not measured (verify localises a failure; --localize asks for it on a pass)")
        )
    first = obj(located.get("first_divergence"))
    layers = [("last within", obj(located.get("last_within")))] if obj(located.get("last_within")) else []
    layers += [("first divergence", first)] if first else []
    layers += [("after", obj(c)) for c in items(located.get("chain"))]
    body: list[Any] = [
        tag("p", text(located.get("summary"), "no summary recorded")),
        facts(
            [
                ("status", text(located.get("status"), "?")),
                ("rule", text(located.get("rule"), "?")),
                ("sample set", f"{text(located.get('sample_set'), '?')} ({fmt(num(located.get('samples')))} samples)"),
                (
                    "layers compared",
                    f"{fmt(num(located.get('compared_layers')))} of {fmt(num(located.get('mapped_layers')))} mapped",
                ),
            ]
        ),
    ]
    if layers:
        headers = ("", "ONNX node", "PyTorch module", "type", "max abs error", "ratio", "within")
        body.append(table(headers, [_layer_row(label, layer) for label, layer in layers], numeric=(4, 5)))
        bars = [
            (f"{text(layer.get('onnx_node'))} ({label})", value, label == "first divergence")
            for label, layer in layers
            if (value := finite(_ratio(layer))) is not None
        ]
        if bars:
            body.append(
                image(
                    plots.ranked_bars(bars, "ratio to the noise floor", "error ratio per layer, in graph order"),
                    "error ratio per layer",
                )
            )
    return section("localization", title, *body)


def timings_section(stages: Mapping[str, float], ident: str, title: str) -> Html:
    """Seconds per stage (``total`` in the title, not among the bars)."""
    shown = {k: v for k, v in stages.items() if k != "total" and v >= 0}
    if not shown:
        return section(ident, title, note("not measured"))
    total = stages.get("total")
    caption = f"seconds per stage (total {total:.1f} s)" if total is not None else "seconds per stage"
    rows = [[k, f"{v:.3f}"] for k, v in sorted(shown.items(), key=lambda kv: -kv[1])]
    return section(
        ident, title, image(plots.timings(shown, caption), caption), table(("stage", "s"), rows, numeric=(1,))
    )
