"""Issue 15: a bundle or run folder is untrusted input. One test (or more) per item of the issue.

1 code from a manifest · 2 paths out of the folder · 3 target names · 4 --force at the rename ·
5 unchecked fields · 6 memory bounded by input size · 7 interrupts · 8 corrupt inputs · 9 16-bit images ·
10 smaller messages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from onnx_pipeline.errors import IntegrityError
from onnx_pipeline.manifest import BundleManifest, RunManifest
from tests.helpers import assert_user_error, invoke, rewrite_manifest

CLI = str(Path(sys.executable).with_name("onnx-pipeline"))

FACTORY = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from onnx_pipeline.sources import build_tiny_vgg


def build():
    return build_tiny_vgg()


build.input_shape = (1, 3, 32, 32)
"""


@pytest.fixture(scope="module")
def factory_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run folder (and a CPU bundle) exported from a factory that writes a marker file when imported."""
    root = tmp_path_factory.mktemp("factory")
    marker = root / "marker"
    factory = root / "evil_model.py"
    factory.write_text(FACTORY.format(marker=str(marker)))
    run = root / "run"
    result = invoke("export", "-m", f"{factory}:build", "-o", run, "--no-isolate", "-t", "cpu-x86_64")
    assert result.exit_code == 0, result.output
    marker.unlink()
    return run, marker


# --- 1: no code runs from a manifest ---------------------------------------------------------------------------


def test_verify_run_does_not_import_the_factory_named_by_the_manifest(factory_run: tuple[Path, Path]) -> None:
    run, marker = factory_run
    assert_user_error(invoke("verify", run, "--no-isolate"), "--trust-source", "--model")
    assert not marker.exists()


def test_bench_does_not_import_the_factory_and_says_how(factory_run: tuple[Path, Path]) -> None:
    run, marker = factory_run
    result = invoke("bench", run / "bundles" / "cpu-x86_64", "--batch-sizes", "1", "--seconds", "0", "--json")
    assert result.exit_code == 0, result.output
    skipped = {s["what"]: s["reason"] for s in json.loads(result.stdout)["skipped"]}
    assert "--trust-source" in skipped["torch-eager"] and "--eager-model" not in skipped.get("nothing", "")
    assert not marker.exists()


def test_trust_source_is_the_explicit_opt_in(factory_run: tuple[Path, Path]) -> None:
    run, marker = factory_run
    result = invoke("verify", run, "--no-isolate", "--trust-source")
    assert result.exit_code == 0, result.output
    assert marker.exists()  # the user asked for it: the factory ran
    marker.unlink()


def test_a_code_path_disguised_as_a_registry_name_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("bundles"))
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.py"
    evil.write_text(FACTORY.format(marker=str(marker)))
    rewrite_manifest(run, lambda d: d["source"].update(model=f"{evil}:build", kind="builtin"))
    assert_user_error(invoke("verify", run, "--no-isolate"), "not a registered model name")
    assert not marker.exists()


# --- 2: no path leaves the folder ---------------------------------------------------------------------------------


def _outside_model(tmp_path: Path, bundle: Path) -> Path:
    outside = tmp_path / "outside.onnx"
    shutil.copy(bundle / "model.fp32.onnx", outside)
    return outside


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
@pytest.mark.parametrize("field", ["files", "models", "heldout", "triton"])
def test_paths_out_of_a_bundle_are_refused(cpu_bundle: Path, tmp_path: Path, field: str, how: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, bundle)
    outside = _outside_model(tmp_path, bundle)
    digest = __import__("onnx_pipeline.files", fromlist=["sha256_file"]).sha256_file(outside)
    if how == "symlink":
        (bundle / "link.onnx").symlink_to(outside)
        rel = "link.onnx"
    else:
        rel = "../outside.onnx" if how == "relative" else str(outside)

    def edit(data: dict) -> None:
        data["files"][rel] = digest
        if field == "models":
            data["models"][0]["file"] = rel
        elif field == "heldout":
            data["heldout"]["file"] = rel
        elif field == "triton":
            data["artifacts"]["triton"] = {"config": rel, "model": rel, "model_name": "x"}

    rewrite_manifest(bundle, edit)
    with pytest.raises(IntegrityError, match="outside the folder"):
        BundleManifest.read(bundle)
    assert_user_error(invoke("predict", bundle, tmp_path / "none.png"), "outside the folder")
    verified = invoke("verify", bundle)
    assert verified.exit_code == 1 and "outside the folder" in verified.stderr and "Traceback" not in verified.output


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_run_folder_model_outside_is_refused(tiny_run: Path, tmp_path: Path, how: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("bundles"))
    outside = tmp_path / "m.onnx"
    shutil.copy(run / "model.onnx", outside)
    rel = "../m.onnx" if how == "relative" else str(outside)
    rewrite_manifest(run, lambda d: (d.update(model_file=rel), d["files"].update({rel: d["files"]["model.onnx"]})))
    with pytest.raises(IntegrityError):
        RunManifest.read(run)
    assert_user_error(invoke("bundle", run, "-t", "cpu-x86_64"), "outside the folder")


def test_an_altered_model_dropped_from_files_or_empty_files_is_refused(cpu_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, bundle)
    (bundle / "model.int8.onnx").write_bytes(b"altered")
    rewrite_manifest(bundle, lambda d: d["files"].pop("model.int8.onnx"))
    for command in (("verify", bundle), ("predict", bundle, bundle / "README.md")):
        result = invoke(*command)
        assert result.exit_code in (1, 2) and "does not list it" in result.stderr, result.output
    rewrite_manifest(bundle, lambda d: d.update(files={}))
    assert_user_error(invoke("predict", bundle, bundle / "README.md"), "lists no files")
    assert invoke("verify", bundle).exit_code != 0


# --- 3: target names are not paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".", "..", "../x", "a/b"])
def test_target_names_that_are_paths_are_refused(tiny_run: Path, tmp_path: Path, name: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "bundles").mkdir(exist_ok=True)
    (run / "bundles" / "keep").mkdir()
    profile = (Path(__file__).parents[2] / "hardware" / "cpu-x86_64.toml").read_text()
    path = tmp_path / "mine.toml"
    path.write_text(profile.replace('name = "cpu-x86_64"', f'name = "{name}"'))
    assert_user_error(invoke("bundle", run, "-t", path, "--force"), "folder name")
    assert (run / "bundles" / "keep").is_dir()
    assert not [p for p in (run / "bundles").iterdir() if p.name.startswith(".")]


# --- 4: --force holds at the final rename ----------------------------------------------------------------------


def test_an_output_that_appears_during_export_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    factory = tmp_path / "racing.py"
    factory.write_text(
        "import pathlib\nfrom onnx_pipeline.sources import build_tiny_vgg\n\n\ndef build():\n"
        f"    pathlib.Path({str(out)!r}).mkdir()\n    pathlib.Path({str(out / 'theirs.txt')!r}).write_text('keep me')\n"
        "    return build_tiny_vgg()\n\n\nbuild.input_shape = (1, 3, 32, 32)\n"
    )
    assert_user_error(invoke("export", "-m", f"{factory}:build", "-o", out, "--no-isolate"), "appeared", "kept")
    assert (out / "theirs.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "racing.py"] or not any(
        p.name.startswith(".out.") for p in tmp_path.iterdir()
    )


def test_force_replaces_at_the_rename(tiny_run: Path, tmp_path: Path) -> None:
    from onnx_pipeline.errors import OutputExistsError
    from onnx_pipeline.files import atomic_output_dir

    out = tmp_path / "out"
    with pytest.raises(OutputExistsError), atomic_output_dir(out) as work:
        (work / "a").write_text("new")
        out.mkdir()  # appears meanwhile
    assert out.is_dir() and not (out / "a").exists()
    with atomic_output_dir(out, force=True) as work:
        (work / "a").write_text("new")
    assert (out / "a").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --- 5: every manifest field is checked ------------------------------------------------------------------------


def test_replaced_or_cut_labels_are_caught(cpu_bundle: Path, tmp_path: Path, photos: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, bundle)
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["labels"][0] = "hotdog"
    path.write_text(json.dumps(data))  # a careless edit: the content digest no longer matches
    assert invoke("verify", bundle).exit_code == 1
    assert_user_error(invoke("predict", bundle, next(photos.iterdir())), "edited after it was written")
    rewrite_manifest(bundle, lambda d: d.update(labels=d["labels"][:3]))  # re-signed, but cut
    assert_user_error(invoke("predict", bundle, next(photos.iterdir())), "labels")


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(files=["model.fp32.onnx"]),
        lambda d: d.update(models="model.fp32.onnx"),
        lambda d: d["models"][0].update(file=7),
        lambda d: d["models"][0]["fidelity"].update(thresholds={"min_cosine": "high"}),
        lambda d: d.update(preprocessing={"resize": -1}),
        lambda d: d.update(preprocessing={"resize": 10**9, "crop": [10**9, 10**9]}),
        lambda d: d.update(preprocessing={"mean": [0.5], "std": [0.0, 1, 1]}),
        lambda d: d.update(labels=[1, 2]),
        lambda d: d.update(inputs=[{"name": 3}]),
        lambda d: d.update(execution_providers=[{"name": "CPUExecutionProvider", "options": {"a": [1]}}]),
        lambda d: d.update(session_options={"intra_op_num_threads": -3}),
    ],
)
def test_malformed_fields_are_one_line_errors(cpu_bundle: Path, tmp_path: Path, photos: Path, edit) -> None:  # type: ignore[no-untyped-def]
    bundle = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, bundle)
    rewrite_manifest(bundle, edit)
    assert_user_error(invoke("predict", bundle, next(photos.iterdir())))
    result = invoke("verify", bundle)
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output


def test_heldout_archive_with_objects_is_refused(cpu_bundle: Path, tmp_path: Path) -> None:
    from onnx_pipeline.files import sha256_file

    bundle = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, bundle)
    heldout = bundle / "fidelity" / "heldout.npz"
    np.savez(heldout, inputs=np.array([{"a": 1}], dtype=object), reference_0=np.zeros(1))
    rewrite_manifest(bundle, lambda d: d["files"].update({"fidelity/heldout.npz": sha256_file(heldout)}))
    assert_user_error(invoke("verify", bundle), "held-out archive")


# --- 6: memory bounded by input size -----------------------------------------------------------------------------


def _limited(args: list[str], limit_bytes: int, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    code = (
        "import resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes})); "
        "from onnx_pipeline.cli import main; sys.argv = ['onnx-pipeline', *sys.argv[1:]]; main()"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("width", [20_000, 200_000])
def test_a_thin_image_cannot_make_predict_allocate_gigabytes(cpu_bundle: Path, tmp_path: Path, width: int) -> None:
    from PIL import Image

    path = tmp_path / "thin.png"
    Image.new("RGB", (1, width), "white").save(path)
    assert path.stat().st_size < 2000
    proc = _limited(["predict", str(cpu_bundle), str(path)], 3 << 30)
    assert proc.returncode == 2, proc.stderr
    assert "crop it" in proc.stderr and "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--batch-sizes", "100000"], "batch"), (["--seconds", "nan"], "seconds"), (["--seconds", "inf"], "seconds")],
)
def test_bench_refuses_what_cannot_fit(cpu_bundle: Path, args: list[str], fragment: str) -> None:
    proc = _limited(["bench", str(cpu_bundle), "--no-eager", *args], 3 << 30)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


# --- 7: SIGTERM is handled like SIGINT ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_export_leaves_nothing_and_no_worker(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [CLI, "export", "-m", "vgg11", "-w", "random", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".out.tmp-*")):
        time.sleep(0.1)
    assert list(tmp_path.glob(".out.tmp-*")), "the export never started"
    time.sleep(3)  # inside the PyTorch worker by now
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (130, 143), stderr
    assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())
    survivors: list[str] = []
    for _ in range(50):  # the worker and multiprocessing's resource tracker end within seconds of the parent
        survivors = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not survivors:
            break
        time.sleep(0.2)
    assert not survivors, f"processes of the export's session still alive: {survivors}"


def test_leftover_of_a_killed_run_is_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from onnx_pipeline.files import atomic_output_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".out.tmp-{dead.pid}-abc"
    (leftover / "model.onnx").parent.mkdir()
    (leftover / "model.onnx").write_bytes(b"x" * 100)
    alive = tmp_path / f".out.tmp-{os.getpid()}-xyz"
    alive.mkdir()
    with atomic_output_dir(tmp_path / "out") as work:
        (work / "f").write_text("x")
    assert not leftover.exists() and alive.exists()
    assert "interrupted run" in caplog.text


# --- 8: corrupt inputs ------------------------------------------------------------------------------------------


def _torchscript(tmp_path: Path) -> Path:
    import torch

    from tests.helpers import tiny_module

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(tiny_module(), torch.randn(1, 3, 32, 32)), str(path))
    return path


def test_torchscript_with_a_bad_crc_is_refused(tmp_path: Path) -> None:
    path = _torchscript(tmp_path)
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the weights
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    result = invoke("export", "-m", path, "-o", tmp_path / "o", "--no-isolate", "--input-shape", "1,3,32,32")
    assert_user_error(result, "CRC")


def test_torchscript_with_a_damaged_directory_is_refused(tmp_path: Path) -> None:
    path = _torchscript(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])
    assert_user_error(invoke("export", "-m", path, "-o", tmp_path / "o", "--no-isolate"))


def test_state_dict_with_wrong_shapes(tmp_path: Path) -> None:
    import torch

    from tests.helpers import tiny_module

    state = tiny_module().state_dict()
    state["0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "w.pt")
    result = invoke("export", "-m", "tiny-vgg", "-w", tmp_path / "w.pt", "-o", tmp_path / "o", "--no-isolate")
    assert_user_error(result, "do not fit", "size mismatch")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("build.input_shape = 'abc'", "input_shape"),
        ("import sys\nsys.exit(3)", "sys.exit(3)"),
        ("build.preprocessing = {'resize': 256, 'sizee': 3}", "sizee"),
    ],
)
def test_bad_factories_are_one_line_errors(tmp_path: Path, body: str, fragment: str) -> None:
    factory = tmp_path / "f.py"
    factory.write_text(
        f"from onnx_pipeline.sources import build_tiny_vgg\n\n\ndef build():\n    return build_tiny_vgg()\n\n\n{body}\n"
    )
    for isolate in ("--no-isolate", "--isolate"):
        assert_user_error(invoke("export", "-m", f"{factory}:build", "-o", tmp_path / "o", isolate), fragment)
    if "preprocessing" in body:
        assert "another version" not in invoke("export", "-m", f"{factory}:build", "-o", tmp_path / "o").stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent_of_the_output(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert_user_error(invoke("export", "-m", "tiny-vgg", "-o", parent / "out", "--no-isolate"), "cannot write")
    finally:
        parent.chmod(0o700)


def test_unwritable_output_parent_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_user_error(invoke("export", "-m", "tiny-vgg", "-o", blocker / "out", "--no-isolate"), "cannot write")


# --- 9: 16-bit images -------------------------------------------------------------------------------------------


def test_16bit_greyscale_photograph_matches_its_8bit_copy(cpu_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data

    from onnx_pipeline.runtime import Bundle

    camera = data.camera()
    Image.fromarray(camera).save(tmp_path / "camera8.png")
    Image.fromarray(camera.astype(np.uint16) * 257).save(tmp_path / "camera16.png")
    assert Image.open(tmp_path / "camera16.png").mode.startswith("I")
    bundle = Bundle.load(cpu_bundle, model="fp32")
    eight = bundle.preprocess(tmp_path / "camera8.png")
    sixteen = bundle.preprocess(tmp_path / "camera16.png")
    np.testing.assert_array_equal(eight, sixteen)
    assert bundle.predict(tmp_path / "camera16.png").class_id == bundle.predict(tmp_path / "camera8.png").class_id


# --- 10: smaller items --------------------------------------------------------------------------------------------


def test_missing_external_data_is_bad_input(tmp_path: Path) -> None:
    import onnx

    from tests.helpers import export_onnx, tiny_module

    path = export_onnx(tiny_module(), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    (tmp_path / "m.onnx.data").unlink()
    assert_user_error(invoke("verify", path, "--model", "tiny-vgg", "--no-isolate"), "m.onnx.data", "missing")


def test_weights_messages_say_what_is_wrong(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    result = invoke("export", "-m", "tiny-vgg", "-w", folder, "-o", tmp_path / "o", "--no-isolate")
    assert_user_error(result, "is a folder")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    result = invoke("export", "-m", "tiny-vgg", "-w", noise, "-o", tmp_path / "o", "--no-isolate")
    assert_user_error(result, "not a PyTorch weights file")
    assert "carries code" not in result.stderr
