"""docs/manifests.md is generated from the manifest types: it must match them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_docs_match_the_code() -> None:
    spec = importlib.util.spec_from_file_location("manifest_docs", ROOT / "scripts" / "manifest_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = (ROOT / "docs" / "manifests.md").read_text(encoding="utf-8")
    assert written == module.render(), "docs/manifests.md is out of date: run python scripts/manifest_docs.py"
    for name in ("RunManifest", "BundleManifest", "ModelRecord", "content_sha256", "files"):
        assert name in written
