"""The notebook in notebooks/ runs top to bottom (with the tiny model, to stay quick)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "onnx_pipeline_tour.ipynb"


def test_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("NOTEBOOK_MODEL", "tiny-vgg")
    monkeypatch.setenv("NOTEBOOK_WORK", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=dict(os.environ))
    outputs = "".join(
        o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "passed" in outputs and "caught: verification FAILED" in outputs
    assert "class_name" in outputs and "torch-eager" in outputs
    assert (tmp_path / "run" / "bundles" / "cpu-x86_64" / "manifest.json").is_file()
    assert "verify: passed" in outputs and (tmp_path / "chelsea.bin").is_file()
    assert (tmp_path / "run" / "bundles" / "torchserve" / "model.mar").is_file()
