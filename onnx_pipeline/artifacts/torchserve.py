"""``torchserve``: ``model.mar``, a TorchServe archive of the bundle's TorchScript model, and ``config.properties``.

The archive is made by TorchServe's own archiver (``torch-model-archiver``, run as a subprocess with
its scratch folder inside the bundle's work folder: it stages files under ``$TMPDIR/<model name>``).
It holds ``model.pt`` (the ``torchscript`` artifact's file, byte for byte), ``handler.py`` (the
bundle's preprocessing, the model, softmax and top-k: ``_templates/torchserve_handler.py``),
``index_to_name.json`` and ``handler.json`` (preprocessing and ``top_k``). ``config.properties``
comes from the profile's ``[torchserve]`` table: loopback addresses, Prometheus metrics, and the
model registered with server-side batching.

``verify_section`` opens the archive again and checks its manifest, its files, that its ``model.pt``
is the bundle's (sha256), that the labels and preprocessing are the bundle's, that the handler
compiles, and that ``config.properties`` still says what was written.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, timed
from onnx_pipeline.artifacts.torchscript import MODEL_FILE, TEMPLATES
from onnx_pipeline.errors import BundleError, IntegrityError, first_line
from onnx_pipeline.files import to_jsonable
from onnx_pipeline.targets import TorchServeSpec

if TYPE_CHECKING:
    from onnx_pipeline.manifest import BundleManifest, RunManifest

SPEC = BuilderSpec("torchserve", "fp32", order=60, requires=("torchserve",), needs=("torchscript",), torch_module=True)

ARCHIVE = "model.mar"
CONFIG = "config.properties"
HANDLER = "handler.py"
#: what the archive holds besides TorchServe's own MAR-INF/MANIFEST.json
ARCHIVED = (MODEL_FILE, HANDLER, "index_to_name.json", "handler.json")
VERSION = "1.0"
ARCHIVER_TIMEOUT_S = 600


def build(ctx: BuildContext) -> ArtifactResult:
    """Archive the torchscript artifact's ``model.pt`` with the handler, and write ``config.properties``."""
    spec = ctx.target.torchserve
    assert spec is not None  # builders_for checked the [torchserve] table
    if ctx.run.preprocessing is None:
        raise BundleError("TorchServe's handler takes images, and the run's model has no image preprocessing")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    name = model_name(ctx.run)
    staging = ctx.scratch / "torchserve"
    staging.mkdir()
    shutil.copyfile(TEMPLATES / "torchserve_handler.py", staging / HANDLER)
    labels = ctx.run.labels or ()
    _write_json(staging / "index_to_name.json", {str(i): label for i, label in enumerate(labels)})
    _write_json(staging / "handler.json", {"preprocessing": ctx.run.preprocessing.to_dict(), "top_k": spec.top_k})
    _archive(name, ctx.out / MODEL_FILE, staging, ctx.out / ARCHIVE)
    timed(timings, "archive", start)
    (ctx.out / CONFIG).write_text(config_properties(name, spec), encoding="utf-8")
    section = {
        "archive": ARCHIVE,
        "config": CONFIG,
        "model_name": name,
        "version": VERSION,
        "handler": HANDLER,
        "files": list(ARCHIVED),
        "settings": to_jsonable(spec),
    }
    return ArtifactResult(kind=SPEC.kind, section=section, timings=timings, readme=_readme(name, spec))


def model_name(run: RunManifest) -> str:
    """The name TorchServe serves the model under (``/predictions/<name>``): the source's, made URL-safe."""
    raw = run.source.model if run.source is not None else "model"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip("-._")
    return name[:64] or "model"


def config_properties(name: str, spec: TorchServeSpec) -> str:
    """``config.properties`` for ``torchserve --ts-config``: loopback APIs, Prometheus metrics, batching."""
    models = {
        name: {
            VERSION: {
                "defaultVersion": True,
                "marName": ARCHIVE,
                "minWorkers": spec.min_workers,
                "maxWorkers": spec.max_workers,
                "batchSize": spec.batch_size,
                "maxBatchDelay": spec.max_batch_delay_ms,
                "responseTimeout": spec.response_timeout_s,
            }
        }
    }
    lines = [
        "# TorchServe configuration written by onnx-pipeline: torchserve --ts-config config.properties",
        "# The APIs listen on the loopback interface only (token authorization off): put a proxy in front of them.",
        f"inference_address=http://127.0.0.1:{spec.inference_port}",
        f"management_address=http://127.0.0.1:{spec.management_port}",
        f"metrics_address=http://127.0.0.1:{spec.metrics_port}",
        "metrics_mode=prometheus",
        "disable_token_authorization=true",
        "enable_model_api=false",
        f"number_of_gpu={spec.number_of_gpu}",
        f"default_workers_per_model={spec.min_workers}",
        f"load_models={ARCHIVE}",
        "models=" + json.dumps(models, separators=(",", ":")),
    ]
    return "\n".join(lines) + "\n"


def read_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def verify_section(manifest: BundleManifest, section: Mapping[str, Any]) -> dict[str, Any]:
    """Open ``model.mar`` and ``config.properties`` again and check them against the bundle; ``BundleError`` if not."""
    archive_file, config_file, name = (section.get(k) for k in ("archive", "config", "model_name"))
    if not all(isinstance(v, str) for v in (archive_file, config_file, name)):
        raise BundleError("the torchserve section names no archive, config or model name: rebuild the bundle")
    try:
        archive = manifest.path(str(archive_file), what="the TorchServe archive")
        config = manifest.path(str(config_file), what="the TorchServe config")
    except IntegrityError as exc:
        raise BundleError(exc.message) from None
    problems, digest = _check_archive(archive, manifest, str(name))
    properties = read_properties(config.read_text(encoding="utf-8"))
    problems += _check_properties(properties, str(name), str(archive_file))
    if problems:
        raise BundleError(f"{archive_file} / {config_file} do not match the bundle: " + "; ".join(problems))
    return {"archive": archive_file, "model_name": name, "model_sha256": digest, "files": list(ARCHIVED)}


def _check_archive(archive: Path, manifest: BundleManifest, name: str) -> tuple[list[str], str | None]:
    problems: list[str] = []
    try:
        with zipfile.ZipFile(archive) as mar:
            names = set(mar.namelist())
            missing = [f for f in (*ARCHIVED, "MAR-INF/MANIFEST.json") if f not in names]
            if missing:
                return [f"the archive lacks {', '.join(missing)}"], None
            model = json.loads(mar.read("MAR-INF/MANIFEST.json")).get("model", {})
            index = json.loads(mar.read("index_to_name.json"))
            settings = json.loads(mar.read("handler.json"))
            handler = mar.read(HANDLER).decode("utf-8")
            sha = hashlib.sha256()
            with mar.open(MODEL_FILE) as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    sha.update(chunk)
    except (OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError) as exc:
        return [f"the archive cannot be read ({first_line(exc)})"], None
    expected = {"modelName": name, "serializedFile": MODEL_FILE, "handler": HANDLER, "modelVersion": VERSION}
    problems += [
        f"MANIFEST.json says {k}={model.get(k)!r}, not {v!r}" for k, v in expected.items() if model.get(k) != v
    ]
    if sha.hexdigest() != manifest.files.get(MODEL_FILE):
        problems.append(f"its {MODEL_FILE} is not the bundle's (sha256 differs)")
    if index != {str(i): label for i, label in enumerate(manifest.labels or ())}:
        problems.append("index_to_name.json differs from the bundle's labels")
    preprocessing = manifest.preprocessing.to_dict() if manifest.preprocessing else None
    if not isinstance(settings, dict) or settings.get("preprocessing") != preprocessing:
        problems.append("handler.json's preprocessing differs from the bundle's")
    try:
        tree = ast.parse(handler, HANDLER)
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        if len(classes) != 1:  # TorchServe takes the one class of a handler module
            problems.append(f"{HANDLER} defines {len(classes)} classes; TorchServe needs exactly one")
    except SyntaxError as exc:
        problems.append(f"{HANDLER} does not compile ({first_line(exc)})")
    return problems, sha.hexdigest()


def _check_properties(properties: Mapping[str, str], name: str, archive: str) -> list[str]:
    problems = []
    if properties.get("metrics_mode") != "prometheus":
        problems.append("config.properties does not set metrics_mode=prometheus")
    for key in ("inference_address", "management_address", "metrics_address"):
        if not properties.get(key, "").startswith("http://127.0.0.1:"):
            problems.append(f"config.properties {key} is not a loopback address")
    try:
        registered = json.loads(properties.get("models", "{}"))[name][VERSION]
        if registered.get("marName") != archive or properties.get("load_models") != archive:
            problems.append(f"config.properties does not load {archive}")
    except (ValueError, KeyError, TypeError, AttributeError):
        problems.append(f"config.properties does not register the model {name!r} version {VERSION}")
    return problems


def _archive(name: str, model: Path, staging: Path, dest: Path) -> None:
    """Run torch-model-archiver on ``model`` and the staged files; move the archive to ``dest``."""
    export = staging / "export"
    tmp = staging / "tmp"
    export.mkdir()
    tmp.mkdir()
    extra = ",".join(str(staging / f) for f in ARCHIVED[2:])
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        *("--model-name", name, "--version", VERSION, "--serialized-file", str(model)),
        *("--handler", str(staging / HANDLER), "--extra-files", extra),
        *("--export-path", str(export), "--archive-format", "zip-store", "--force"),
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=ARCHIVER_TIMEOUT_S,
            env={**os.environ, "TMPDIR": str(tmp)},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BundleError(f"torch-model-archiver did not finish within {ARCHIVER_TIMEOUT_S} s") from None
    made = export / f"{name}.mar"
    if done.returncode != 0 or not made.is_file():
        if "No module named" in done.stderr:
            raise BundleError("torch-model-archiver is not installed: pip install torch-model-archiver torchserve")
        raise BundleError(f"torch-model-archiver failed: {(done.stderr.strip() or done.stdout.strip())[-500:]}")
    made.replace(dest)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _readme(name: str, spec: TorchServeSpec) -> tuple[str, ...]:
    port = spec.inference_port
    return (
        f"- `{ARCHIVE}`: TorchServe archive of `{MODEL_FILE}` with `{HANDLER}` (the bundle's preprocessing, "
        "softmax, top-k), `index_to_name.json` and `handler.json`; made with torch-model-archiver",
        f"- `{CONFIG}`: TorchServe settings: APIs on 127.0.0.1 (inference {port}, management "
        f"{spec.management_port}, metrics {spec.metrics_port}, Prometheus format), batches of up to "
        f"{spec.batch_size} within {spec.max_batch_delay_ms} ms, {spec.min_workers}-{spec.max_workers} workers",
        "",
        "Serve it (TorchServe needs Java 11 or later), from a working folder of your own (TorchServe writes "
        "`logs/` there):",
        "",
        "```bash",
        f"torchserve --start --ncs --model-store BUNDLE --ts-config BUNDLE/{CONFIG}",
        f"curl http://127.0.0.1:{port}/ping",
        f"curl http://127.0.0.1:{port}/predictions/{name} -T photo.jpg   # class_id, class_name, probability, top_k",
        f"curl http://127.0.0.1:{spec.metrics_port}/metrics",
        "torchserve --stop",
        "```",
    )
