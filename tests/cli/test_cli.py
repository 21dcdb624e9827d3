"""The CLI: exit codes, one-line errors without tracebacks, clean --json."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onnx_pipeline.cli import app
from tests.helpers import assert_user_error as _assert_user_error

runner = CliRunner()


def _invoke(*args: str) -> object:
    return runner.invoke(app, list(args))


def test_help_lists_commands_with_examples() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0 and "export" in result.stdout and "verify" in result.stdout
    result = _invoke("export", "--help")
    assert result.exit_code == 0 and "onnx-pipeline export --model vgg16" in result.stdout
    from onnx_pipeline import __version__

    result = _invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"onnx-pipeline {__version__}"


def test_export_then_verify_with_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke("export", "-m", "tiny-vgg", "-w", "random", "-o", str(out), "--no-isolate", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert report["status"] == "passed" and report["steps"]["verify"]["passed"] is True
    result = _invoke("verify", str(out), "--no-isolate", "--report", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.stdout and "parity" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "passed"


def test_failed_check_exits_1_with_figures(tiny_run: Path) -> None:
    result = _invoke("verify", str(tiny_run), "--no-isolate", "--atol", "0", "--rtol", "0", "--min-cosine", "1")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "FAILED" in result.stderr and "Traceback" not in result.output


def test_missing_file(tmp_path: Path) -> None:
    _assert_user_error(_invoke("verify", str(tmp_path / "nope.onnx"), "-m", "tiny-vgg"), "does not exist")


def test_corrupt_and_truncated_onnx(tiny_run: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((tiny_run / "model.onnx").read_bytes()[:5000])
    _assert_user_error(_invoke("verify", str(truncated), "-m", "tiny-vgg", "--no-isolate"), "not a readable ONNX")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 10)
    _assert_user_error(_invoke("verify", str(garbage), "-m", "tiny-vgg", "--no-isolate"), "garbage.onnx")


def test_text_file_as_model(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    _assert_user_error(_invoke("verify", str(text), "-m", "tiny-vgg", "--no-isolate"), "notes.onnx")
    _assert_user_error(_invoke("export", "-m", str(tmp_path / "notes.pt"), "-o", str(tmp_path / "o")), "does not exist")
    pt = tmp_path / "notes.pt"
    pt.write_text("hello")
    _assert_user_error(_invoke("export", "-m", str(pt), "-o", str(tmp_path / "o"), "--no-isolate"), "TorchScript")
    assert not (tmp_path / "o").exists()


def test_wrong_input_shape(tmp_path: Path) -> None:
    result = _invoke(
        "export", "-m", "tiny-vgg", "-o", str(tmp_path / "o"), "--input-shape", "1,5,64,64", "--no-isolate"
    )
    _assert_user_error(result, "input shape")
    assert not (tmp_path / "o").exists()
    _assert_user_error(_invoke("export", "-m", "tiny-vgg", "-o", str(tmp_path / "o"), "--input-shape", "1,x"), "shape")


def test_unknown_model_name(tmp_path: Path) -> None:
    result = _invoke("export", "-m", "vgg17", "-o", str(tmp_path / "o"), "--no-isolate")
    _assert_user_error(result, "unknown model 'vgg17'", "vgg16")


def test_weights_with_mismatched_keys(tmp_path: Path) -> None:
    import torch

    from onnx_pipeline.sources import build_tiny_vgg

    state = build_tiny_vgg().state_dict()
    state["classifier.extra.weight"] = torch.zeros(3)
    del state["0.weight"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    result = _invoke("export", "-m", "tiny-vgg", "-w", str(path), "-o", str(tmp_path / "o"), "--no-isolate")
    _assert_user_error(result, "missing 0.weight", "unexpected classifier.extra.weight")


def test_weights_pickle_that_carries_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (print, ("this code ran",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    result = _invoke("export", "-m", "tiny-vgg", "-w", str(path), "-o", str(tmp_path / "o"), "--no-isolate")
    _assert_user_error(result, "carries code")
    assert "this code ran" not in result.output


def test_state_dict_weights_are_used_and_hashed(tmp_path: Path) -> None:
    import torch

    from onnx_pipeline.files import sha256_file
    from onnx_pipeline.sources import build_tiny_vgg

    torch.manual_seed(7)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": build_tiny_vgg().state_dict()}, path)  # a checkpoint, not a bare state_dict
    out = tmp_path / "run"
    result = _invoke("export", "-m", "tiny-vgg", "-w", str(path), "-o", str(out), "--no-isolate", "--json")
    assert result.exit_code == 0, result.output
    source = json.loads((out / "manifest.json").read_text())["source"]
    assert source["weights_sha256"] == sha256_file(path) and source["rescaled_random"] is False


def test_imagenet_weights_offline_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    import torchvision.models._api as api

    def offline(*_a: object, **_k: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    result = _invoke("export", "-m", "vgg11", "-w", "imagenet", "-o", str(tmp_path / "o"), "--no-isolate")
    _assert_user_error(result, "offline", "--weights random")


def test_imagenet_weights_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--weights imagenet loads torchvision's file from the hub cache (filled here by the test)."""
    import torch
    import torchvision

    hub = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(hub))
    torch.hub.set_dir(str(hub))
    try:
        weights = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
        torch.manual_seed(0)
        model = torchvision.models.squeezenet1_1()
        target = hub / "checkpoints" / weights.url.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True)
        torch.save(model.state_dict(), target)
        monkeypatch.setattr(torch.hub, "check_hash", False, raising=False)
        from onnx_pipeline.config import ModelConfig
        from onnx_pipeline.sources import load_model

        original = torchvision.models._api.WeightsEnum.get_state_dict

        def no_hash_check(self: object, *args: object, **kwargs: object) -> object:
            kwargs["check_hash"] = False  # the file written here is not torchvision's real one
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_hash_check)
        loaded = load_model(ModelConfig(model="squeezenet1_1", weights="imagenet"))
        assert loaded.source["weights_file"] == str(target)
        assert loaded.labels is not None and len(loaded.labels) == 1000 and loaded.labels[0] == "tench"
        assert torch.equal(loaded.module.features[0].weight, model.features[0].weight)
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_json_stdout_is_clean_with_the_isolated_pytorch_process(tmp_path: Path) -> None:
    """The real console script, default --isolate: the spawned PyTorch process must not pollute stdout."""
    import subprocess
    import sys

    cli = Path(sys.executable).with_name("onnx-pipeline")
    proc = subprocess.run(
        [str(cli), "export", "-m", "tiny-vgg", "-w", "random", "-o", str(tmp_path / "run"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "passed" and report["config"]["isolate_torch"] is True
    assert "Traceback" not in proc.stderr


def test_failed_download_keeps_json_stdout_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub prints 'Downloading: ...' on stdout before it fails: --json must still be pure JSON."""
    import urllib.error

    import torch.hub

    torch.hub.set_dir(str(tmp_path / "hub"))

    def unreachable(*_a: object, **_k: object) -> None:
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    try:
        result = _invoke("export", "-m", "squeezenet1_1", "-w", "imagenet", "-o", str(tmp_path / "o"), "--json",
                         "--no-isolate")  # fmt: skip
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["status"] == "failed" and "offline" in report["error"]
    assert not (tmp_path / "o").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from any write (here the run manifest, the last file written) is the user's to fix: one line
    that says what to do, exit 1, and neither the output folder nor its temporary folder is left."""
    import errno
    import os

    from onnx_pipeline.manifest import types

    def full(path: Path, _data: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(types, "write_json", full)
    out = tmp_path / "run"
    result = _invoke("export", "-m", "tiny-vgg", "-w", "random", "-o", str(out), "--no-isolate")
    _assert_user_error(result, "no space left on the device while writing", "manifest.json", "another disk", code=1)
    assert list(tmp_path.iterdir()) == []
