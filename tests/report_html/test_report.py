"""report.html of run folders and bundles: every section with its figures, embedded, escaped, offline."""

from __future__ import annotations

import base64
import dataclasses
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from onnx_pipeline import api
from onnx_pipeline.bench import BenchResult, BenchRow, GemmRate
from onnx_pipeline.cli import app
from onnx_pipeline.config import BundleConfig
from onnx_pipeline.errors import InputError, IntegrityError
from onnx_pipeline.files import json_text
from onnx_pipeline.manifest import BUNDLE_UNLISTED, BundleManifest, RunManifest, read_manifest
from onnx_pipeline.report_html import REPORT_FILE, write_report
from onnx_pipeline.steps.bundle import build_bundle
from onnx_pipeline.steps.verify_bundle import verify_bundle
from onnx_pipeline.targets import load_target

RUN_SECTIONS = ("verdict", "parity", "histograms", "noise-floor", "localization", "timings")
BUNDLE_SECTIONS = ("bundle", "fidelity", "sensitivity", "kept-in-float", "dpu", "bench", "timings")
PAYLOAD = "<script>alert(1)</script>"
ATTR_PAYLOAD = '"><img src=x onerror=alert(2)>'
runner = CliRunner()


class Page(HTMLParser):
    """What a report is made of: tags with their attributes, the section each image is in, the text."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.images: dict[str, list[dict[str, str]]] = {}
        self.text: dict[str, list[str]] = {}
        self._section = ""
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if tag == "section":
            self._section = values.get("id", "")
            self.images.setdefault(self._section, [])
        if tag == "img":
            self.images.setdefault(self._section, []).append(values)

    def handle_data(self, data: str) -> None:
        self.text.setdefault(self._section, []).append(data)

    def section_text(self, ident: str) -> str:
        return " ".join(self.text.get(ident, []))


def unsafe_parts(document: str) -> list[str]:
    """Everything that would run code or reach the network in a report (empty for a safe one)."""
    page = Page(document)
    problems = []
    for tag, attrs in page.tags:
        if tag in ("script", "iframe", "object", "embed", "link", "base", "form"):
            problems.append(f"<{tag}> element")
        for name, value in attrs.items():
            if name.startswith("on"):
                problems.append(f"{name} attribute on <{tag}>")
            if name in ("src", "href", "action", "srcset") and not value.startswith("data:image/png;base64,"):
                problems.append(f"{name}={value[:40]!r} on <{tag}> is not an embedded image")
    lowered = document.lower()
    problems += [f"{word} in the document" for word in ("http://", "https://", "url(", "@import") if word in lowered]
    return problems


def check_report(path: Path, sections: tuple[str, ...], figures: dict[str, int]) -> Page:
    """The report parses, has every section, at least ``figures[id]`` embedded PNGs per section, nothing unsafe."""
    document = path.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>")
    page = Page(document)
    ids = [attrs.get("id") for tag, attrs in page.tags if tag == "section"]
    assert ids == list(sections)
    for ident, count in figures.items():
        assert len(page.images.get(ident, [])) >= count, f"section {ident} lacks its figure"
    for image in (img for imgs in page.images.values() for img in imgs):
        payload = base64.b64decode(image["src"].removeprefix("data:image/png;base64,"), validate=True)
        assert payload.startswith(b"\x89PNG\r\n\x1a\n") and len(payload) > 2000
    assert unsafe_parts(document) == []
    assert any(tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy" for tag, attrs in page.tags)
    return page


@pytest.fixture(scope="module")
def run_copy(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture(scope="module")
def bundles(run_copy: Path, photos: Path) -> dict[str, Path]:
    """A CPU and a Vitis AI bundle of the tiny run, built by the bundle step (which writes their reports)."""
    config = BundleConfig(calibration_images=photos)
    return {t: build_bundle(run_copy, load_target(t), config).bundle_dir for t in ("cpu-x86_64", "vitis-ai-kv260")}


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return copy


# --------------------------------------------------------------------------- run folders


def test_export_writes_the_run_report(tiny_run: Path) -> None:
    page = check_report(tiny_run / REPORT_FILE, RUN_SECTIONS, {"histograms": 1, "timings": 1})
    manifest = RunManifest.read(tiny_run)
    assert REPORT_FILE not in manifest.files
    assert "PASSED" in page.section_text("verdict")
    floor = page.section_text("noise-floor")  # measured by export's verification (float64 reference)
    assert "ratio" in floor and "pass" in floor and "not measured" not in floor
    assert "not measured" in page.section_text("localization")  # a passing run is not localised
    verification = manifest.verification or {}
    for sample in verification["samples"]:
        assert sample["name"] in page.section_text("parity")
    assert "error histogram of output output" in [i["alt"] for i in page.images["histograms"]]


def test_verification_records_error_histograms_per_sample_set(tiny_run: Path) -> None:
    verification = RunManifest.read(tiny_run).verification or {}
    output = verification["outputs"][0]
    histograms = output["error_histograms"]
    assert list(histograms["sets"]) == [s["name"] for s in verification["samples"]]
    edges = histograms["edges_log10"]
    assert edges == sorted(edges) and len(edges) >= 2
    for sample in verification["samples"]:
        entry = histograms["sets"][sample["name"]]
        assert len(entry["counts"]) == len(edges) - 1
        assert entry["elements"] == sample["shape"][0] * output["shape"][0]
        assert sum(entry["counts"]) + entry["zeros"] == entry["elements"]
    # the largest error lies in the top bin's decade
    assert 10 ** edges[-2] <= output["max_abs_error"] * 1.0001 and output["max_abs_error"] <= 10 ** edges[-1]


def _issue8_fields(verification: dict[str, Any]) -> dict[str, Any]:
    """The verification shaped as the noise-floor rule writes it (outputs[].noise, localization)."""
    layer = {"onnx_node": "/features/features.3/Conv", "module": "features.3", "module_type": "Conv2d",
             "max_abs_error": 0.02, "scale": 2.0, "within": False, "ratio": 812.7}  # fmt: skip
    calm = {**layer, "onnx_node": "/features/features.0/Conv", "module": "features.0", "within": True, "ratio": 1.4}
    outputs = [
        {**o, "noise": {"torch_max": 2e-7, "torch_mean": 3e-8, "onnx_max": 5e-5, "onnx_mean": 1e-5,
                        "floor_max": 2e-7, "floor_mean": 3e-8, "factor": 16.0, "ratio": 333.3, "within": False}}
        for o in verification["outputs"]
    ]  # fmt: skip
    localization = {"status": "diverged", "summary": "first divergence at /features/features.3/Conv",
                    "rule": "noise-floor", "sample_set": "normal-b3", "samples": 3, "mapped_layers": 9,
                    "compared_layers": 4, "first_divergence": layer, "last_within": calm,
                    "chain": [{**layer, "onnx_node": "/classifier/Gemm", "ratio": 90.0}]}  # fmt: skip
    return {**verification, "outputs": outputs, "localization": localization, "rule": "noise-floor"}


def test_noise_floor_and_localisation_are_shown_when_recorded(run_copy: Path, tmp_path: Path) -> None:
    folder = _copy(run_copy, tmp_path)
    manifest = RunManifest.read(folder)
    dataclasses.replace(manifest, verification=_issue8_fields(dict(manifest.verification or {}))).write(folder)
    page = check_report(api.report(folder), RUN_SECTIONS, {"histograms": 1, "localization": 1, "timings": 1})
    noise = page.section_text("noise-floor")
    assert "333×" in noise and "16×" in noise and "not measured" not in noise
    located = page.section_text("localization")
    assert "/features/features.3/Conv" in located and "features.0" in located and "813×" in located
    assert "/classifier/Gemm" in located and "not measured" not in located


def test_damaged_free_form_fields_read_as_not_measured(run_copy: Path, tmp_path: Path) -> None:
    folder = _copy(run_copy, tmp_path)
    manifest = RunManifest.read(folder)
    broken = dict(manifest.verification or {})
    broken["outputs"] = [{"name": 5, "error_histograms": {"edges_log10": "x"}, "noise": [1, 2]}, "junk"]
    broken["localization"] = "nowhere"
    dataclasses.replace(manifest, verification=broken).write(folder)
    page = check_report(write_report(folder), RUN_SECTIONS, {"timings": 1})
    assert "not measured" in page.section_text("histograms")
    assert "not measured" in page.section_text("noise-floor")
    assert "not measured" in page.section_text("localization")


# --------------------------------------------------------------------------- bundles


def test_bundle_step_writes_an_unlisted_report(bundles: dict[str, Path]) -> None:
    cpu = check_report(
        bundles["cpu-x86_64"] / REPORT_FILE, BUNDLE_SECTIONS, {"fidelity": 1, "timings": 1, "sensitivity": 1}
    )
    assert "model.int8.onnx" in cpu.section_text("fidelity") and "not applicable" in cpu.section_text("dpu")
    assert "not measured" in cpu.section_text("bench")
    # every lowered model's per-layer sensitivity is recorded by the bundle step, and drawn
    assert "int8-qdq: " in cpu.section_text("sensitivity") and "most sensitive first" in cpu.section_text("sensitivity")
    assert "none: every layer was lowered" in cpu.section_text("kept-in-float")
    vitis = check_report(bundles["vitis-ai-kv260"] / REPORT_FILE, BUNDLE_SECTIONS, {"fidelity": 1, "dpu": 1})
    summary = read_manifest(bundles["vitis-ai-kv260"]).artifacts["vitis-ai"]["dpu_report"]
    assert f"{summary['on_dpu']} of {summary['nodes']} predicted on the DPU" in vitis.section_text("dpu")
    assert "DPU subgraph" in vitis.section_text("dpu")
    for folder in bundles.values():
        manifest = BundleManifest.read(folder)
        assert set(BUNDLE_UNLISTED).isdisjoint(manifest.files)
        assert verify_bundle(folder).unlisted_files == ()


def test_sensitivity_and_layers_kept_in_float_are_shown_when_recorded(bundles: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(bundles["cpu-x86_64"], tmp_path)
    manifest = BundleManifest.read(folder)
    layers = [{"layer": f"/features/conv{i}", "sqnr_db": 40.0 - 5 * i, "cosine": 0.999 - i / 1000} for i in range(4)]
    section = {**manifest.artifacts["int8-qdq"], "sensitivity": {"metric": "sqnr_db", "layers": layers},
               "kept_in_float": [{"layer": "/features/conv3", "reason": "lowest SQNR"}]}  # fmt: skip
    dataclasses.replace(manifest, artifacts={**manifest.artifacts, "int8-qdq": section}).write(folder)
    page = check_report(write_report(folder), BUNDLE_SECTIONS, {"sensitivity": 1, "fidelity": 1})
    assert "/features/conv0" in page.section_text("sensitivity") and "sqnr_db" in page.section_text("sensitivity")
    kept = page.section_text("kept-in-float")
    assert "/features/conv3" in kept and "lowest SQNR" in kept and "not recorded" not in kept


def _bench_json(folder: Path, path: Path) -> Path:
    rows = tuple(
        BenchRow(backend, model, precision, batch, 20, p50, p50 * 1.2, p50 * 1.5, p50, p50 * 0.9, batch * 1e3 / p50,
                 floor_ms=0.1 * batch, vs_floor=p50 / (0.1 * batch))
        for backend, model, precision, p50 in (("onnxruntime", "int8", "int8", 0.5), ("torch-eager", "eager", "fp32",
                                                                                         2.0))
        for batch in (1, 8)
    )  # fmt: skip
    result = BenchResult(str(folder), rows, GemmRate(256, 1, 0.01, 61.5), None, 2, {"graph_optimization_level": "all"})
    path.write_text(json_text(result), encoding="utf-8")
    return path


def test_bench_results_are_drawn_without_changing_the_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(bundles["cpu-x86_64"], tmp_path)
    before = BundleManifest.read(folder).digest
    result = runner.invoke(app, ["report", str(folder), "--bench", str(_bench_json(folder, tmp_path / "b.json"))])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().replace("\n", "") == str(folder / REPORT_FILE)
    page = check_report(folder / REPORT_FILE, BUNDLE_SECTIONS, {"bench": 1})
    bench = page.section_text("bench")
    assert "61.5 GFLOP/s" in bench and "torch-eager" in bench and "5.00×" in bench and "not measured" not in bench
    assert BundleManifest.read(folder).digest == before and verify_bundle(folder).passed


def test_a_file_that_is_not_a_bench_result_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(bundles["cpu-x86_64"], tmp_path)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"rows": [{"backend": "x", "p50_ms": "fast"}]}', encoding="utf-8")
    with pytest.raises(InputError, match="not a bench result"):
        api.report(folder, bench=wrong)
    result = runner.invoke(app, ["report", str(folder), "--bench", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- untrusted input


def test_strings_from_a_manifest_are_escaped(run_copy: Path, bundles: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(run_copy, tmp_path)
    manifest = RunManifest.read(run)
    assert manifest.labels and manifest.source
    verification = _issue8_fields(dict(manifest.verification or {}))
    verification["localization"]["first_divergence"]["module"] = ATTR_PAYLOAD
    verification["failures"] = [PAYLOAD]
    dataclasses.replace(
        manifest,
        labels=(PAYLOAD, *manifest.labels[1:]),
        source=dataclasses.replace(manifest.source, model=ATTR_PAYLOAD),
        verification=verification,
    ).write(run)
    bundle = _copy(bundles["vitis-ai-kv260"], tmp_path)
    bm = BundleManifest.read(bundle)
    vitis = {**bm.artifacts["vitis-ai"], "sensitivity": [{"layer": PAYLOAD, "sqnr_db": 3.0}]}
    vitis["dpu_report"] = {**vitis["dpu_report"], "cpu_nodes": [{"name": ATTR_PAYLOAD, "op_type": PAYLOAD}]}
    target = dataclasses.replace(bm.target, description=PAYLOAD)
    dataclasses.replace(bm, artifacts={**bm.artifacts, "vitis-ai": vitis}, target=target).write(bundle)
    for path, sections in ((api.report(run), RUN_SECTIONS), (api.report(bundle), BUNDLE_SECTIONS)):
        document = path.read_text(encoding="utf-8")
        assert PAYLOAD not in document and ATTR_PAYLOAD not in document
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
        check_report(path, sections, {})  # no script element, no event attribute, nothing fetched
        assert PAYLOAD in " ".join(t for texts in Page(document).text.values() for t in texts)


def test_the_safety_check_catches_unsafe_markup() -> None:
    unsafe = (
        '<!DOCTYPE html><html><head><link rel="stylesheet" href="https://cdn.example/x.css"></head><body>'
        f'{PAYLOAD}<img src="https://cdn.example/p.png"><div onclick="x()">a</div></body></html>'
    )
    problems = unsafe_parts(unsafe)
    assert any("<script>" in p for p in problems) and any("<link>" in p for p in problems)
    assert any("onclick" in p for p in problems) and any("src=" in p for p in problems)
    assert any("https://" in p for p in problems)


def test_a_damaged_folder_gets_no_report(run_copy: Path, tmp_path: Path) -> None:
    folder = _copy(run_copy, tmp_path)
    (folder / REPORT_FILE).unlink()
    with (folder / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(IntegrityError):
        api.report(folder)
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2 and "integrity" in result.output and "Traceback" not in result.output
    assert not (folder / REPORT_FILE).exists()


# --------------------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(browser: str, page: Path, screenshot: Path, profile: Path) -> list[str]:
    """Open ``page`` in headless Chromium, write a screenshot; returns the console messages it logged."""
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--screenshot={screenshot}",
        "--window-size=1200,2400", page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def _png_size_and_colours(path: Path) -> tuple[tuple[int, int], int]:
    from PIL import Image

    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        return image.size, len(colours or [])


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (make test installs it where apt can)")
def test_reports_render_in_headless_chromium(tiny_run: Path, bundles: dict[str, Path], tmp_path: Path) -> None:
    browser = _chromium()
    assert browser is not None
    for name, page in (("run", tiny_run / REPORT_FILE), ("vitis", bundles["vitis-ai-kv260"] / REPORT_FILE)):
        shot = tmp_path / f"{name}.png"
        console = render(browser, page, shot, tmp_path / f"profile-{name}")
        assert console == [], console
        size, colours = _png_size_and_colours(shot)
        assert size == (1200, 2400) and colours > 50  # drawn: text, tables and plots, not a blank page


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (make test installs it where apt can)")
def test_the_browser_check_catches_a_page_with_errors(tmp_path: Path) -> None:
    browser = _chromium()
    assert browser is not None
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>", encoding="utf-8")
    console = render(browser, page, tmp_path / "broken.png", tmp_path / "profile")
    assert any("undefinedFunction" in line for line in console)
