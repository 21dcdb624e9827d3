"""Each command's options reach the API function under its name; the CLI's own options stay behind."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from onnx_pipeline import api
from onnx_pipeline.cli import app
from onnx_pipeline.cli.options import forward
from onnx_pipeline.report import RunReport

runner = CliRunner()


def _record(monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    real = getattr(api, name)

    def fake(*args: Any, **kwargs: Any) -> Any:
        # the real signature binds them: a name the API lacks, or one missing, fails here
        bound = inspect.signature(real).bind(*args, **kwargs)
        calls.update(bound.arguments)
        return RunReport(command=name, status="passed")

    fake.__signature__ = inspect.signature(real)  # type: ignore[attr-defined]
    fake.__name__ = name
    monkeypatch.setattr(api, name, fake)
    return calls


def test_export_options_reach_the_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _record(monkeypatch, "export")
    args = ["export", "-m", "tiny-vgg", "-w", "random", "-o", str(tmp_path / "r"), "--seed", "7",
            "--input-shape", "1,3,40,40", "--static-batch", "--no-simplify", "--atol", "0.01", "--min-cosine",
            "0.9", "-t", "cpu-x86_64", "--no-fallback", "--external-data", "--json", "--debug"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls["model"] == "tiny-vgg" and calls["weights"] == "random" and calls["seed"] == 7
    assert calls["input_shape"] == (1, 3, 40, 40) and calls["static_batch"] is True
    assert calls["simplify"] is False and calls["verify"] is True and calls["external_data"] is True
    assert calls["atol"] == 0.01 and calls["min_cosine"] == 0.9 and calls["rtol"] is None
    assert calls["targets"] == ("cpu-x86_64",) and calls["fallback"] is False
    assert calls["output"] == tmp_path / "r" and "as_json" not in calls and "debug" not in calls


def test_verify_and_bundle_options_reach_the_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _record(monkeypatch, "verify")
    result = runner.invoke(
        app, ["verify", str(tmp_path), "--provider", "CPUExecutionProvider", "--localize", "--trust-source", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert calls["path"] == tmp_path and calls["providers"] == ["CPUExecutionProvider"]
    assert calls["localize"] is True and calls["trust_source"] is True and calls["model"] is None
    calls = _record(monkeypatch, "bundle")
    result = runner.invoke(app, ["bundle", str(tmp_path), "-t", "cuda", "-t", "cpu-x86_64", "--force", "--json"])
    assert result.exit_code == 0, result.output
    assert calls["run"] == tmp_path and calls["targets"] == ["cuda", "cpu-x86_64"]
    assert calls["seed"] == 0 and calls["force"] is True and calls["fallback"] is True


def test_forward_refuses_a_name_the_api_does_not_take() -> None:
    with pytest.raises(TypeError, match="takes no colour"):
        forward(api.verify, {}, colour="blue")
    call = forward(api.verify, {"path": "x", "as_json": True, "localize": True})
    assert call.keywords == {"path": "x", "localize": True}
