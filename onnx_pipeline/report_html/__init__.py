"""``report.html``: one self-contained page per run folder and per bundle, for a person to read.

Export writes it into every run folder, the bundle step into every bundle; ``onnx-pipeline report
PATH`` (``api.report``) rewrites it, optionally with bench results (``--bench bench.json``).

- One file: figures are PNG data URIs drawn by matplotlib (Agg), styles are inline, there is no
  script, and a Content-Security-Policy forbids scripts and every fetch: it opens offline, anywhere.
- It is a view of the manifest, read through ``manifest.read`` (the trust boundary); every string
  taken from it is escaped (``html.esc``), and free-form fields are read field by field
  (``data``), so a foreign or damaged field shows as "not measured" rather than as markup.
- It is not among a folder's hashed ``files`` (``manifest.RUN_UNLISTED``, ``BUNDLE_UNLISTED``):
  it is derived from the manifest, so rewriting it (with bench results, or by a newer version)
  leaves the folder's hashes and digest unchanged.

Modules: ``html`` (escaping building blocks), ``data`` (typed reads of free-form JSON), ``plots``
(the figures), ``run`` and ``bundle`` (the sections), ``bench`` (a bench JSON read back).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from onnx_pipeline.manifest import BundleManifest, RunManifest, read_manifest
from onnx_pipeline.report_html.bench import BenchData, bench_section, load_bench
from onnx_pipeline.report_html.bundle import bundle_sections
from onnx_pipeline.report_html.data import obj, text
from onnx_pipeline.report_html.html import page
from onnx_pipeline.report_html.run import run_sections, timings_section

REPORT_FILE = "report.html"


def render_report(manifest: RunManifest | BundleManifest, bench: BenchData | None = None) -> str:
    """The report of a manifest read from its folder, as one HTML document."""
    from onnx_pipeline import __version__

    assert manifest.root is not None, "render_report needs a manifest read from its folder"
    digest = f"manifest sha256 {manifest.digest}" if manifest.digest else "manifest"
    if isinstance(manifest, BundleManifest):
        title = f"Bundle {manifest.target.name}"
        model = text(obj(manifest.run.get("source")).get("model"))
        subtitle = f"{model + ' · ' if model else ''}{', '.join(manifest.precisions)} · {digest}"
        sections = [*bundle_sections(manifest), bench_section(bench, manifest.root)]
        sections.append(timings_section(manifest.timings, "timings", "Build timings per stage"))
    else:
        source = manifest.source
        title = f"Run {source.model}" if source else "Run"
        subtitle = f"{source.weights + ' weights · ' if source else ''}opset {manifest.opset} · {digest}"
        sections = run_sections(manifest)
        if bench is not None:
            sections.append(bench_section(bench, manifest.root))
    generator = (
        f"written by onnx-pipeline {__version__} from this folder's manifest.json (onnx-pipeline report rewrites it)"
    )
    return page(title, subtitle, sections, generator)


def write_report(folder: Path | str, *, bench: Path | str | None = None, check: bool = True) -> Path:
    """Write ``folder/report.html`` for a run folder or a bundle; returns its path.

    ``check`` hashes every listed file first (``manifest.read``); the steps that have just written
    the folder skip it. ``bench``: a bench JSON to include. The file is replaced atomically.
    """
    folder = Path(folder)
    manifest = read_manifest(folder, check=check)
    data = load_bench(bench) if bench is not None else None
    document = render_report(manifest, data)
    target = folder / REPORT_FILE
    handle, tmp = tempfile.mkstemp(prefix=f".{REPORT_FILE}.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(document)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600: the report should read like the folder's files
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


__all__ = ["REPORT_FILE", "BenchData", "load_bench", "render_report", "write_report"]
