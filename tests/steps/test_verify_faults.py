"""The noise-floor criterion and first-divergence localisation, on faults the tests build themselves.

Each fault is small enough that the old scale-aware tolerance (``--atol 1e-4 --rtol 1e-3``) misses
some of them; each must be caught with the defaults and localised to the layer that was changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from onnx_pipeline.cli import app
from onnx_pipeline.config import ModelConfig, Tolerances, VerifyConfig
from onnx_pipeline.errors import VerificationError
from onnx_pipeline.pipeline import VerifyRequest, run_export, run_verify
from tests.helpers import CONTROL_FLOW, TESTS, export_onnx, tiny_config

TINY = ModelConfig(model="tiny-vgg", weights="random", seed=0)
NORM_ACT = f"{TESTS / 'models' / 'norm_act.py'}:build"
NORM_ACT_MODEL = ModelConfig(model=NORM_ACT, weights="random", input_shape=(1, 3, 16, 16))


def _verify(path: Path, model: ModelConfig = TINY, **verify: object) -> dict:
    report = run_verify(VerifyRequest(path=path, model=model, verify=VerifyConfig(**verify)))  # type: ignore[arg-type]
    return report.steps["verify"]


def _failed(path: Path, model: ModelConfig = TINY, **verify: object) -> dict:
    with pytest.raises(VerificationError) as info:
        _verify(path, model, **verify)
    return info.value.result.steps["verify"]


def _edit_initializer(source: Path, target: Path, name: str, change: Callable[[np.ndarray], None]) -> Path:
    model = onnx.load(str(source))
    tensor = next(i for i in model.graph.initializer if i.name == name)
    array = numpy_helper.to_array(tensor).copy()
    change(array)
    tensor.CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(model, str(target))
    return target


def _norm_act_export(path: Path, change: Callable[[object], None] | None = None) -> Path:
    """The norm_act model exported (as its registry weights give it), optionally with one module changed."""
    from onnx_pipeline.sources import load_model

    module = load_model(NORM_ACT_MODEL).module
    if change is not None:
        change(module)
    return export_onnx(module, path, size=16)


def _assert_localised(verify: dict, module: str) -> None:
    located = verify["localization"]
    assert located["status"] == "diverged", located["summary"]
    first = located["first_divergence"]
    assert first["module"] == module, located["summary"]
    assert first["ratio"] > Tolerances().noise_factor and first["onnx_node"]
    assert located["last_within"] is None or located["last_within"]["within"]
    assert f"first divergence at {first['onnx_node']} (module {module})" in verify["verdict"]


# --------------------------------------------------------------------------- faults, caught and localised


def test_one_conv_output_channel_scaled_by_1_01(tiny_run: Path, tmp_path: Path) -> None:
    bad = _edit_initializer(tiny_run / "model.onnx", tmp_path / "bad.onnx", "5.weight", lambda a: a[0].__imul__(1.01))
    verify = _failed(bad)
    output = verify["outputs"][0]
    assert output["rule"] == "noise-floor" and output["noise"]["ratio"] > 100
    _assert_localised(verify, "5")
    assert verify["localization"]["chain"][0]["module"] == "6"  # the ReLU after it carries the error on


def test_a_bias_shifted_by_1e_3(tiny_run: Path, tmp_path: Path) -> None:
    bad = _edit_initializer(
        tiny_run / "model.onnx", tmp_path / "bias.onnx", "2.bias", lambda a: a.__setitem__(0, a[0] + 1e-3)
    )
    _assert_localised(_failed(bad), "2")
    # the old scale-aware rule lets it through: the reason for the noise floor
    assert _verify(bad, tolerances=Tolerances(atol=1e-4, rtol=1e-3))["rule"] == "fixed"


def test_a_layernorm_with_another_epsilon(tmp_path: Path) -> None:
    def other_epsilon(module: object) -> None:
        module.norm.eps = 1e-4  # type: ignore[attr-defined]

    _assert_localised(_failed(_norm_act_export(tmp_path / "eps.onnx", other_epsilon), NORM_ACT_MODEL), "norm")


def test_gelu_exported_with_the_tanh_approximation(tmp_path: Path) -> None:
    import torch

    def tanh_gelu(module: object) -> None:
        module.act = torch.nn.GELU(approximate="tanh")  # type: ignore[attr-defined]

    verify = _failed(_norm_act_export(tmp_path / "gelu.onnx", tanh_gelu), NORM_ACT_MODEL)
    _assert_localised(verify, "act")
    assert verify["localization"]["last_within"]["module"] == "norm"


# --------------------------------------------------------------------------- clean exports pass


def test_clean_exports_pass_under_the_noise_floor(tiny_run: Path, tmp_path: Path) -> None:
    tiny = _verify(tiny_run / "model.onnx")
    clean = _verify(_norm_act_export(tmp_path / "clean.onnx"), NORM_ACT_MODEL, localize=True)
    for verify in (tiny, clean):
        assert verify["rule"] == "noise-floor" and verify["float64_unavailable"] is None
        noise = verify["outputs"][0]["noise"]
        assert noise["ratio"] <= noise["factor"] and noise["floor_max"] > 0
        assert verify["verdict"].startswith("passed: every output within")
    assert clean["localization"]["status"] == "clean" and clean["localization"]["first_divergence"] is None
    assert clean["localization"]["compared_layers"] >= 4


def test_the_seed_control_flow_model_passes_at_its_floor(tmp_path: Path) -> None:
    report = run_export(tiny_config(tmp_path / "run", model={"model": CONTROL_FLOW, "weights": "random"}))
    noise = report.steps["verify"]["outputs"][0]["noise"]
    # exact operations: PyTorch float32 has no error, the floor is its lower bound, the ratio 0
    assert noise["torch_max"] == 0 and noise["floor_at_lower_bound"] and noise["ratio"] == 0


def test_verify_run_folder_rechecks_with_the_noise_floor(tiny_run: Path) -> None:
    verify = run_verify(VerifyRequest(path=tiny_run)).steps["verify"]
    export = json.loads((tiny_run / "manifest.json").read_text())["verification"]
    assert verify["rule"] == export["rule"] == "noise-floor"
    assert verify["outputs"][0]["noise"]["ratio"] == pytest.approx(export["outputs"][0]["noise"]["ratio"], rel=1e-6)


# --------------------------------------------------------------------------- other rules


def test_without_float64_the_scale_aware_rule_decides_and_says_why(tmp_path: Path) -> None:
    factory = tmp_path / "float32_only.py"
    factory.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 3)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.float())  # float32, whatever it is given\n"
        "def build():\n    return M()\n"
    )
    model = ModelConfig(model=f"{factory}:build", input_shape=(1, 4))
    from onnx_pipeline.sources import load_model

    path = export_onnx_plain(load_model(model).module, tmp_path / "m.onnx", (2, 4))
    verify = _verify(path, model)
    assert verify["rule"] == "scale-aware" and "float64" in verify["float64_unavailable"]
    assert verify["outputs"][0]["noise"] is None and "no float64 reference" in verify["verdict"]


def export_onnx_plain(module: object, path: Path, shape: tuple[int, ...]) -> Path:
    import torch

    batch = ({0: torch.export.Dim("batch", min=1, max=64)},)
    program = torch.onnx.export(
        module, (torch.randn(*shape),), dynamo=True, input_names=["input"], dynamic_shapes=batch
    )
    assert program is not None
    program.save(str(path))
    return path


def test_json_report_holds_floor_ratios_and_the_first_divergence(tiny_run: Path, tmp_path: Path) -> None:
    bad = _edit_initializer(tiny_run / "model.onnx", tmp_path / "bad.onnx", "5.weight", lambda a: a[0].__imul__(1.01))
    result = CliRunner().invoke(
        app, ["verify", str(bad), "-m", "tiny-vgg", "-w", "random", "--no-isolate", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 1
    verify = json.loads(result.stdout)["steps"]["verify"]
    noise = verify["outputs"][0]["noise"]
    assert {"floor_max", "floor_mean", "ratio_max", "ratio_mean", "factor"} <= set(noise)
    assert verify["localization"]["first_divergence"]["onnx_node"] == "node_conv2d_2"
    assert verify["localization"]["first_divergence"]["module"] == "5"


def test_the_table_shows_floor_ratio_and_verdict(tiny_run: Path) -> None:
    result = CliRunner().invoke(app, ["verify", str(tiny_run), "--no-isolate", "--localize"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "floor" in result.stdout and "ratio" in result.stdout and "verdict: passed" in result.stdout
    assert "localisation (13 layers compared" in result.stdout


def test_localisation_runs_on_the_pytorch_side_and_this_process_never_imports_torch(
    tiny_run: Path, tmp_path: Path
) -> None:
    bad = _edit_initializer(
        tiny_run / "model.onnx", tmp_path / "bad.onnx", "2.bias", lambda a: a.__setitem__(0, a[0] + 1e-3)
    )
    code = (
        "import sys\n"
        "from onnx_pipeline import api\n"
        "from onnx_pipeline.errors import VerificationError\n"
        "if __name__ == '__main__':\n"
        "    try:\n"
        f"        api.verify({str(bad)!r}, model='tiny-vgg', weights='random', isolate=True)\n"
        "    except VerificationError as exc:\n"
        "        print(exc.result.steps['verify']['localization']['first_divergence']['module'])\n"
        "    print('torch' in sys.modules)\n"
    )
    script = tmp_path / "parent.py"
    script.write_text(code)
    root = str(TESTS.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["2", "False"], out.stderr[-2000:]


def test_a_torchscript_export_is_localised_by_its_scope_names(tmp_path: Path) -> None:
    import torch

    from onnx_pipeline.sources import load_model

    path = tmp_path / "ts.onnx"
    torch.onnx.export(
        load_model(TINY).module,
        (torch.randn(2, 3, 64, 64),),
        str(path),
        dynamo=False,
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
    )
    bias = next(i.name for i in onnx.load(str(path)).graph.initializer if i.name.startswith("2."))
    bad = _edit_initializer(path, tmp_path / "bad.onnx", bias, lambda a: a.__setitem__(0, a[0] + 1e-3))
    verify = _failed(bad)
    assert verify["localization"]["first_divergence"]["onnx_node"].startswith("/2/")
    _assert_localised(verify, "2")
