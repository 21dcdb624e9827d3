"""The KServe InferenceService written beside a bundle's Triton repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_pipeline import api
from onnx_pipeline.artifacts.triton import KSERVE_MANIFEST, render_inference_service, service_name
from onnx_pipeline.errors import BundleError
from onnx_pipeline.manifest import read_manifest
from onnx_pipeline.steps.verify_bundle import verify_bundle
from onnx_pipeline.targets import TritonSpec
from tests.helpers import make_run_folder


def test_cuda_bundle_carries_an_inference_service(tmp_path: Path, photos: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    api.bundle(run, ["cuda"], calibration_images=photos)
    bundle = run / "bundles" / "cuda"
    manifest = read_manifest(bundle)
    section = manifest.artifacts["triton"]  # type: ignore[union-attr]
    assert section["kserve"] == KSERVE_MANIFEST and KSERVE_MANIFEST in manifest.files
    text = (bundle / KSERVE_MANIFEST).read_text()
    name = section["model_name"]
    for line in (
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        f"  name: {service_name(name)}",
        "        name: onnx",
        "      protocolVersion: v2",
        "      runtime: kserve-tritonserver",
        f'      storageUri: "s3://CHANGE-ME/{name}/triton"',
        '          nvidia.com/gpu: "1"',
    ):
        assert line in text.splitlines(), line
    assert f"/v2/models/{name}/infer" in text and "onnx-pipeline serve" in text
    assert KSERVE_MANIFEST in (bundle / "README.md").read_text()
    assert verify_bundle(bundle).passed
    (bundle / KSERVE_MANIFEST).write_text(text.replace("protocolVersion: v2", "protocolVersion: v1"))
    with pytest.raises(BundleError, match=r"inference_service\.yaml does not match its sha256"):
        verify_bundle(bundle)


def test_cpu_instances_ask_for_no_gpu() -> None:
    text = render_inference_service("vgg16", TritonSpec(instance_kind="KIND_CPU"))
    assert "nvidia.com/gpu" not in text and "name: vgg16" in text


@pytest.mark.parametrize(
    ("name", "label"),
    [("vgg16", "vgg16"), ("my_models_py_build", "my-models-py-build"), ("ResNet_50", "resnet-50"), ("3d", "model-3d")],
)
def test_service_names_are_dns_labels(name: str, label: str) -> None:
    assert service_name(name) == label
