"""Config precedence and validation: CLI > config file > target > model default > built-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_pipeline.config import PipelineConfig, Tolerances, VerifyConfig, resolve_pipeline_config
from onnx_pipeline.errors import InputError
from onnx_pipeline.sources import model_defaults


def test_precedence_is_resolved_once_and_recorded(tmp_path: Path) -> None:
    config_file = tmp_path / "pipeline.toml"
    config_file.write_text('[export]\nopset = 17\nexporter = "torchscript"\n[tolerances]\natol = 0.01\n')
    config = resolve_pipeline_config(
        cli={"": {"output": tmp_path / "o"}, "export": {"opset": 19, "exporter": None}},
        config_file=config_file,
        target={"tolerances": {"atol": 0.5, "rtol": 0.02}},
        model_defaults=model_defaults("vgg16"),
    )
    assert config.export.opset == 19 and config.provenance["export.opset"] == "cli"
    assert config.export.exporter == "torchscript" and config.provenance["export.exporter"] == "config-file"
    assert config.verify.tolerances.atol == 0.01 and config.provenance["tolerances.atol"] == "config-file"
    assert config.verify.tolerances.rtol == 0.02 and config.provenance["tolerances.rtol"] == "target"
    assert config.model.weights == "imagenet" and config.provenance["model.weights"] == "model"
    assert "model.seed" not in config.provenance  # built-in default


def test_model_defaults_need_no_import() -> None:
    assert model_defaults("tiny-vgg") == {"model": {"weights": "random"}}
    assert model_defaults("resnet18") == {"model": {"weights": "imagenet"}}
    assert model_defaults("pkg.mod:build") == {"model": {"weights": "random"}}
    assert model_defaults("traced.pt") == {"model": {"weights": "embedded"}}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[export]\nopsett = 17\n", "opsett"),
        ("[exprt]\nopset = 17\n", "exprt"),
        ("[export\n", "not valid TOML"),
    ],
)
def test_config_file_errors_name_the_problem(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=fragment):
        resolve_pipeline_config(cli={}, config_file=path)


def test_invalid_values_are_refused() -> None:
    with pytest.raises(InputError, match="atol"):
        Tolerances(atol=-1)
    with pytest.raises(InputError, match="batch-size"):
        VerifyConfig(batch_size=1)
    with pytest.raises(InputError, match="opset"):
        resolve_pipeline_config(cli={"export": {"opset": 5}})
    with pytest.raises(InputError, match="exporter"):
        resolve_pipeline_config(cli={"export": {"exporter": "magic"}})
    assert isinstance(resolve_pipeline_config(cli={}), PipelineConfig)


def test_fallback_from_config_file_and_cli(tmp_path: Path) -> None:
    assert resolve_pipeline_config(cli={}).fallback is True
    path = tmp_path / "c.toml"
    path.write_text("fallback = false\n", encoding="utf-8")
    config = resolve_pipeline_config(cli={"": {"fallback": None}}, config_file=path)
    assert config.fallback is False and config.provenance["fallback"] == "config-file"
    assert resolve_pipeline_config(cli={"": {"fallback": False}}).fallback is False
