"""``--progress``: a bar per stage on a terminal, nothing on a pipe or under --json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from onnx_pipeline.cli import app, output
from onnx_pipeline.cli.output import progress_display


def _stages(monkeypatch: pytest.MonkeyPatch, enabled: bool, stdout_terminal: bool, stages: list[str]) -> str:
    """Run ``stages`` under ``progress_display`` with a terminal stderr; what stderr showed."""
    sink = io.StringIO()
    monkeypatch.setattr(output, "err", Console(file=sink, force_terminal=True, width=100))
    monkeypatch.setattr(output, "out", Console(file=io.StringIO(), force_terminal=stdout_terminal, width=100))
    with progress_display(enabled, bars=True) as step:
        for stage in stages:
            step(stage)
    return sink.getvalue()


def test_bars_name_every_stage_and_finish_it(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _stages(monkeypatch, True, True, ["export", "bundle cuda: fp16"])
    assert "export" in text and "bundle cuda: fp16" in text
    assert text.count("✓") >= 2  # both stages shown finished


@pytest.mark.parametrize(("enabled", "stdout_terminal"), [(False, True), (True, False)])
def test_no_bars_under_json_or_when_stdout_is_piped(
    monkeypatch: pytest.MonkeyPatch, enabled: bool, stdout_terminal: bool
) -> None:
    assert "━" not in _stages(monkeypatch, enabled, stdout_terminal, ["export"])


def test_bundle_with_progress_and_json_prints_only_json(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(app, ["bundle", str(run), "-t", "cuda", "--progress", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "passed"
