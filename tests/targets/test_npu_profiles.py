"""AMD NPU profiles (vitis-ai-vek385, ryzen-ai-xdna1/2): they load, name their builders, and [npu] is validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_pipeline.errors import TargetError

NPU_PROFILES = {"vitis-ai-vek385": "vaiml", "ryzen-ai-xdna2": "ryzen-ai", "ryzen-ai-xdna1": "ryzen-ai"}
LEGACY = ("zcu102", "zcu104", "kv260", "vck190", "vek280", "alveo-v70", "alveo-u50", "alveo-u280")
HARDWARE = Path(__file__).resolve().parents[2] / "hardware"


@pytest.mark.parametrize(("name", "kind"), sorted(NPU_PROFILES.items()))
def test_npu_profile_loads_and_names_its_builder(name: str, kind: str) -> None:
    from onnx_pipeline.artifacts import builders_for
    from onnx_pipeline.targets import load_target

    target = load_target(name)
    assert [b.SPEC.kind for b in builders_for(target)] == [kind]
    spec = target.npu
    assert spec is not None and spec.quant_config in spec.quant_configs
    assert spec.sources and spec.unconfirmed, "every fact cited, every unconfirmed one listed"
    assert target.batch == "static" and target.opset.min == target.opset.max == 17
    assert target.execution_providers[0].name == "VitisAIExecutionProvider"


def test_the_flows_take_their_own_configurations() -> None:
    from onnx_pipeline.targets import load_target

    vek385, xdna2, xdna1 = (load_target(n).npu for n in ("vitis-ai-vek385", "ryzen-ai-xdna2", "ryzen-ai-xdna1"))
    assert vek385 is not None and xdna2 is not None and xdna1 is not None
    assert vek385.quant_config == "VINT8" and "BF16" in vek385.quant_configs
    assert vek385.device == "ve2-xc2ve3858" and vek385.target == "VAIML"
    assert xdna2.quant_config == "XINT8" and {"A8W8", "A16W8", "BF16"} <= set(xdna2.quant_configs)
    assert "BF16" not in xdna1.quant_configs  # Ryzen AI 1.4: PHX/HPT run CNN INT8 only


@pytest.mark.parametrize("board", LEGACY)
def test_dpu_profiles_say_they_are_legacy(board: str) -> None:
    from onnx_pipeline.targets import load_target

    description = load_target(f"vitis-ai-{board}").description
    assert description.startswith("LEGACY DPU flow (compiler frozen at Vitis AI 3.5")
    assert "last verified release for this board: Vitis AI 3." in description


def _profile(tmp_path: Path, old: str, new: str) -> Path:
    text = (HARDWARE / "ryzen-ai-xdna2.toml").read_text()
    assert old in text
    path = tmp_path / "mine.toml"
    path.write_text(text.replace(old, new))
    return path


def test_npu_table_is_validated(tmp_path: Path) -> None:
    from onnx_pipeline.targets import load_target

    choice = load_target(_profile(tmp_path, 'quant_config = "XINT8"', 'quant_config = "A16W8"')).npu
    assert choice is not None and choice.quant_config == "A16W8"  # a precision choice is a one-line edit
    with pytest.raises(TargetError, match=r"npu\.quant_config"):
        load_target(_profile(tmp_path, 'quant_config = "XINT8"', 'quant_config = "VINT8"'))  # not the flow's
    with pytest.raises(TargetError, match=r"npu\.flow"):
        load_target(_profile(tmp_path, 'flow = "ryzen-ai"', 'flow = "dpu"'))
    with pytest.raises(TargetError, match=r"npu\.cache"):
        load_target(_profile(tmp_path, 'flow = "ryzen-ai"', 'flow = "ryzen-ai"\ncache = "/tmp/x"'))
    with pytest.raises(TargetError, match=r"npu\.optimize_level"):
        load_target(_profile(tmp_path, 'flow = "ryzen-ai"', 'flow = "ryzen-ai"\noptimize_level = -1'))
