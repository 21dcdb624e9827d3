"""``triton``: a Triton Inference Server model repository serving the bundle's fp16 model.

``triton/<name>/1/model.onnx`` (a hard link to ``model.fp16.onnx`` where the file system allows, with its
external data file beside it under the same name when it has one) and
``triton/<name>/config.pbtxt``, written, parsed back and checked against the model, and
``kserve/inference_service.yaml``, a KServe ``InferenceService`` that serves that repository with
Triton (ONNX model format, Open Inference Protocol v2) on a cluster. The config is
protobuf text format (Triton's ``ModelConfig``). ``parse_pbtxt`` is a small reader for that format
(fields, nested messages, lists, strings, numbers, enums), enough to read back what
``render_config`` writes and hand-edited variants of it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx_pipeline.artifacts.base import ArtifactResult, BuildContext, BuilderSpec, timed
from onnx_pipeline.errors import BundleError
from onnx_pipeline.targets import TritonSpec

if TYPE_CHECKING:
    from onnx_pipeline.manifest import BundleManifest

SPEC = BuilderSpec("triton", "fp16", order=50, requires=("triton",), needs=("fp16",))

#: ONNX TensorProto element type → Triton data type
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSig:
    """A model input or output as Triton sees it."""

    name: str
    data_type: str
    dims: tuple[int, ...]  # -1 for a dynamic dim


def model_signature(model: Any) -> tuple[list[TensorSig], list[TensorSig], bool]:
    """Inputs, outputs (full dims, -1 where dynamic) and whether every tensor's first dim is dynamic."""
    initializers = {i.name for i in model.graph.initializer}

    def sig(value: Any) -> TensorSig:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSig(value.name, ONNX_TO_TRITON.get(tensor.elem_type, f"ONNX_{tensor.elem_type}"), dims)

    inputs = [sig(v) for v in model.graph.input if v.name not in initializers]
    outputs = [sig(v) for v in model.graph.output]
    batched = all(t.dims and t.dims[0] == -1 for t in (*inputs, *outputs))
    return inputs, outputs, batched


def render_config(name: str, model: Any, spec: TritonSpec) -> str:
    """The config.pbtxt for ``model`` served by the ONNX Runtime backend under the name ``name``."""
    inputs, outputs, batched = model_signature(model)
    max_batch = spec.max_batch_size if batched else 0

    def tensors(kind: str, sigs: list[TensorSig]) -> list[str]:
        lines = [f"{kind} ["]
        for index, t in enumerate(sigs):
            dims = t.dims[1:] if max_batch > 0 else t.dims
            lines += [
                "  {",
                f'    name: "{t.name}"',
                f"    data_type: {t.data_type}",
                f"    dims: [ {', '.join(str(d) for d in dims)} ]",
                "  }" + ("," if index < len(sigs) - 1 else ""),
            ]
        lines.append("]")
        return lines

    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch}"]
    lines += tensors("input", inputs)
    lines += tensors("output", outputs)
    lines += [
        "instance_group [",
        "  {",
        f"    count: {spec.instance_count}",
        f"    kind: {spec.instance_kind}",
        "  }",
        "]",
    ]
    if max_batch > 0:
        lines.append("dynamic_batching {")
        preferred = [b for b in spec.preferred_batch_sizes if b <= max_batch]
        if preferred:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
        lines += [f"  max_queue_delay_microseconds: {spec.max_queue_delay_microseconds}", "}"]
    if spec.accelerator:
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator : [",
            "      {",
            f'        name : "{spec.accelerator}"',
            f'        parameters {{ key: "precision_mode" value: "{spec.precision_mode}" }}',
            '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


# --- a small protobuf text-format reader --------------------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|([-+]?[0-9][0-9.eE+-]*)|([A-Za-z_][A-Za-z0-9_.]*)|([{}\[\]:,;<>]))'
)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"unexpected character {text[pos:].lstrip()[:1]!r} at offset {pos}")
        pos = match.end()
        if match.group(1) is None:
            out.append(next(g for g in match.groups()[1:] if g is not None))
    return out


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into {field: [values...]} (every field a list; messages are dicts).

    Raises ValueError with the position of the first syntax error.
    """
    tokens = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"unexpected end of input (expected {expected or 'a value'})")
        token = tokens[pos]
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, got {token!r} (token {pos})")
        pos += 1
        return token

    def scalar(token: str) -> Any:
        if token[0] in "\"'":
            return bytes(token[1:-1], "utf-8").decode("unicode_escape")
        if re.fullmatch(r"[-+]?[0-9]+", token):
            return int(token)
        if re.fullmatch(r"[-+]?[0-9][0-9.eE+-]*", token):
            return float(token)
        if token in ("true", "True"):
            return True
        if token in ("false", "False"):
            return False
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", token):
            return token  # an enum value, e.g. TYPE_FP32
        raise ValueError(f"expected a value, got {token!r}")

    def value() -> Any:
        token = take()
        if token in ("{", "<"):
            return message("}" if token == "{" else ">")
        return scalar(token)

    def message(end: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            token = peek()
            if token is None:
                if end is not None:
                    raise ValueError(f"missing {end!r} at end of input")
                return fields
            if token == end:
                take()
                return fields
            if token in (",", ";"):
                take()
                continue
            name = take()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
                raise ValueError(f"expected a field name, got {name!r}")
            if peek() == ":":
                take(":")
            if peek() == "[":
                take("[")
                items = fields.setdefault(name, [])
                while peek() != "]":
                    items.append(value())
                    if peek() == ",":
                        take(",")
                take("]")
            elif peek() in ("{", "<"):
                fields.setdefault(name, []).append(value())
            else:
                fields.setdefault(name, []).append(value())

    return message(None)


def _one(fields: dict[str, list[Any]], key: str, default: Any = None) -> Any:
    values = fields.get(key, [])
    return values[-1] if values else default


def check_config(text: str, model: Any, *, model_name: str, source: str = "config.pbtxt") -> dict[str, Any]:
    """Parse ``text`` and check it against ``model``; raises BundleError listing every mismatch.

    Returns a summary (name, platform, max_batch_size, inputs, outputs) for the manifest.
    """
    try:
        config = parse_pbtxt(text)
    except ValueError as exc:
        raise BundleError(f"{source} is not valid protobuf text: {exc}") from None
    problems: list[str] = []
    if _one(config, "name") != model_name:
        problems.append(f"name is {_one(config, 'name')!r}, the repository folder is {model_name!r}")
    if _one(config, "platform") != "onnxruntime_onnx" and _one(config, "backend") != "onnxruntime":
        problems.append(f"platform is {_one(config, 'platform')!r}, expected 'onnxruntime_onnx'")
    max_batch = _one(config, "max_batch_size", 0)
    inputs, outputs, batched = model_signature(model)
    if not isinstance(max_batch, int) or max_batch < 0:
        problems.append(f"max_batch_size must be a non-negative integer, got {max_batch!r}")
        max_batch = 0
    if max_batch > 0 and not batched:
        problems.append(f"max_batch_size is {max_batch} but the model's first dims are not all dynamic")
    if max_batch == 0 and config.get("dynamic_batching"):
        problems.append("dynamic_batching needs max_batch_size > 0")
    for kind, expected in (("input", inputs), ("output", outputs)):
        declared = {_one(t, "name"): t for t in config.get(kind, [])}
        names = [t.name for t in expected]
        if sorted(declared) != sorted(names):
            problems.append(f"{kind} names {sorted(declared)} differ from the model's {sorted(names)}")
        for sig in expected:
            entry = declared.get(sig.name)
            if entry is None:
                continue
            dtype = _one(entry, "data_type")
            if dtype != sig.data_type:
                problems.append(f"{kind} '{sig.name}': data_type {dtype}, the model has {sig.data_type}")
            dims = tuple(entry.get("dims", []))
            want = sig.dims[1:] if max_batch > 0 else sig.dims
            if dims != want:
                problems.append(f"{kind} '{sig.name}': dims {list(dims)}, the model needs {list(want)}")
    if problems:
        raise BundleError(f"{source} does not match the model: " + "; ".join(problems))
    return {
        "name": model_name,
        "platform": _one(config, "platform"),
        "max_batch_size": max_batch,
        "inputs": [{"name": t.name, "data_type": t.data_type, "dims": list(t.dims)} for t in inputs],
        "outputs": [{"name": t.name, "data_type": t.data_type, "dims": list(t.dims)} for t in outputs],
        "accelerators": [
            _one(acc, "name")
            for opt in config.get("optimization", [])
            for ea in opt.get("execution_accelerators", [])
            for acc in ea.get("gpu_execution_accelerator", [])
        ],
    }


def model_name(source: str) -> str:
    """The Triton model name for a model source name (safe for a folder and a URL)."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in source)
    return name.strip("_") or "model"


def _link(source: Path, target: Path) -> None:
    """A hard link to ``source`` where the file system allows it (same bytes, no copy), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


KSERVE_MANIFEST = "kserve/inference_service.yaml"


def service_name(name: str) -> str:
    """A Kubernetes resource name (DNS-1035 label) for model ``name``: lower case, '-' for the rest."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = f"model-{label}".rstrip("-")
    return label[:63].rstrip("-")


def render_inference_service(name: str, spec: TritonSpec) -> str:
    """A KServe ``InferenceService`` serving the Triton repository ``triton/`` (model ``name``), protocol v2."""
    gpu = spec.instance_kind == "KIND_GPU"
    lines = [
        "# KServe InferenceService: Triton serves this bundle's triton/ repository (ONNX, Open Inference Protocol v2).",
        "# 1. Copy the bundle's triton/ folder to storage the cluster reads and set storageUri to it.",
        "# 2. kubectl apply -f kserve/inference_service.yaml",
        f"# 3. Call POST <service url>/v2/models/{name}/infer: the same client code (tritonclient.http, or",
        "#    JSON/binary v2 requests) works against `onnx-pipeline serve` on a laptop.",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {service_name(name)}",
        "spec:",
        "  predictor:",
        "    model:",
        "      modelFormat:",
        "        name: onnx",
        "      protocolVersion: v2",
        "      runtime: kserve-tritonserver",
        f'      storageUri: "s3://CHANGE-ME/{name}/triton"',
    ]
    if gpu:
        lines += ["      resources:", "        limits:", '          nvidia.com/gpu: "1"']
    return "\n".join(lines) + "\n"


def build(ctx: BuildContext) -> ArtifactResult:
    import onnx

    spec = ctx.target.triton
    assert spec is not None
    start = time.perf_counter()
    served = str(ctx.built["fp16"].section["file"])  # type: ignore[index]
    name = model_name(ctx.run.source.model if ctx.run.source else "model")
    folder = ctx.out / "triton" / name
    (folder / "1").mkdir(parents=True)
    source = ctx.out / served
    _link(source, folder / "1" / "model.onnx")
    model = onnx.load(str(source), load_external_data=False)
    # The model's external data keeps its name: model.onnx refers to it by that relative location.
    data = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    for location in data:
        _link(ctx.out / location, folder / "1" / location)
    text = render_config(name, model, spec)
    (folder / "config.pbtxt").write_text(text, encoding="utf-8")
    summary = check_config(text, model, model_name=name, source=f"triton/{name}/config.pbtxt")
    (ctx.out / KSERVE_MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    (ctx.out / KSERVE_MANIFEST).write_text(render_inference_service(name, spec), encoding="utf-8")
    timings: dict[str, float] = {}
    timed(timings, "repository", start)
    section = {
        "repository": "triton",
        "model_name": name,
        "config": f"triton/{name}/config.pbtxt",
        "model": f"triton/{name}/1/model.onnx",
        "serves": served,
        **({"external_data": [f"triton/{name}/1/{location}" for location in data]} if data else {}),
        "kserve": KSERVE_MANIFEST,
        **summary,
    }
    return ArtifactResult(
        kind=SPEC.kind,
        section=section,
        timings=timings,
        readme=(
            f"- `triton/`: Triton model repository; start with `tritonserver --model-repository=triton` "
            f"(model `{name}`, max_batch_size {summary['max_batch_size']}"
            + (f", its weights in `{', '.join(data)}` beside `model.onnx`)" if data else ")"),
            f"- `{KSERVE_MANIFEST}`: KServe InferenceService for that repository (ONNX, protocol v2); set its "
            "storageUri and `kubectl apply -f` it. Clients of `onnx-pipeline serve` work against it unchanged",
        ),
    )


def verify_section(manifest: BundleManifest, section: Mapping[str, Any]) -> dict[str, Any]:
    """Parse the repository's config.pbtxt back and check it against the model it serves."""
    import onnx

    try:
        config, model_file, name = str(section["config"]), str(section["model"]), str(section["model_name"])
    except KeyError as exc:
        raise BundleError(f"the bundle's triton section lacks {exc}: rebuild the bundle") from None
    if "kserve" in section:  # bundles built before the KServe manifest have none
        manifest.path(str(section["kserve"]), what="the KServe InferenceService")
    model = onnx.load(str(manifest.path(model_file, what="the Triton model")), load_external_data=False)
    text = manifest.path(config, what="the Triton config").read_text(encoding="utf-8", errors="replace")
    return check_config(text, model, model_name=name, source=config)
