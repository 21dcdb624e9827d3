"""The folder side of the trust boundary: paths that stay inside, files checked against their sha256,
and the manifest's own content digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from onnx_pipeline.errors import InputError, IntegrityError
from onnx_pipeline.files import sha256_file

MANIFEST = "manifest.json"
RUN_SCHEMA = "onnx-pipeline/run/2"
BUNDLE_SCHEMA = "onnx-pipeline/bundle/2"
RUN_SCHEMAS = ("onnx-pipeline/run/1", RUN_SCHEMA)
BUNDLE_SCHEMAS = ("onnx-pipeline/bundle/1", BUNDLE_SCHEMA)
#: files of a run folder that ``files`` does not list: the manifest itself, reports, and the bundles
RUN_UNLISTED = ("manifest.json", "report.json", "report.html", "bundles")
#: files of a bundle that ``files`` does not list: the manifest itself and its HTML report (a view of the
#: manifest, rewritten by ``onnx-pipeline report`` without changing the bundle's hashes)
BUNDLE_UNLISTED = ("manifest.json", "report.html")


def inside(root: Path, rel: str, *, what: str = "a path") -> Path:
    """``root/rel`` when ``rel`` is a relative POSIX path that stays inside ``root`` (symlinks resolved)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise IntegrityError(f"{MANIFEST} in {root} names {what} {rel!r} that is not a relative path: rebuild it")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise IntegrityError(f"{MANIFEST} in {root} names {what} {rel!r} outside the folder: refused")
    path = Path(root).joinpath(*pure.parts)
    real_root = Path(root).resolve()
    try:
        path.resolve().relative_to(real_root)
    except ValueError:
        raise IntegrityError(
            f"{MANIFEST} in {root} names {what} {rel!r}, which resolves outside the folder (a symlink?): refused"
        ) from None
    return path


def check_files(root: Path, files: Mapping[str, str]) -> None:
    """Every listed file exists inside ``root`` and matches its sha256; one error names every problem."""
    problems: list[str] = []
    for rel, expected in files.items():
        path = inside(root, rel, what="the file")
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{rel} does not match its sha256 (altered or truncated)")
    if problems:
        raise IntegrityError(
            f"{root} fails its integrity check: " + "; ".join(problems) + ". Copy it again or rebuild it"
        )


def hash_folder(root: Path, *, exclude: tuple[str, ...] = (), known: Mapping[str, str] | None = None) -> dict[str, str]:
    """sha256 of every file under ``root`` by POSIX path, sorted, minus ``exclude`` (names or top folders).

    ``known`` holds digests computed while the files were written (not read again). A symlink is refused:
    a folder onnx-pipeline writes holds none.
    """
    known = known or {}
    hashes: dict[str, str] = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in exclude or rel.split("/", 1)[0] in exclude:
            continue
        if path.is_symlink():
            raise IntegrityError(f"{path} is a symbolic link: a folder onnx-pipeline writes holds none")
        if path.is_file():
            hashes[rel] = known.get(rel) or sha256_file(path)
    return hashes


def content_digest(data: Mapping[str, Any]) -> str:
    """sha256 of a manifest's content (canonical JSON without ``content_sha256`` itself)."""
    body = {k: v for k, v in data.items() if k != "content_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_raw(root: Path) -> tuple[dict[str, Any], str]:
    path = root / MANIFEST
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: give a run folder or a bundle written by onnx-pipeline")
    if not path.is_file():
        raise InputError(f"{root} has no {MANIFEST}: give a run folder or a bundle (RUN/bundles/TARGET)")
    raw = path.read_bytes()
    if len(raw) > 64 << 20:
        raise InputError(f"{path} is {len(raw) >> 20} MiB: too large for a manifest, refused")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path} is not valid JSON ({type(exc).__name__}): rebuild the folder") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON object: rebuild the folder")
    recorded = data.get("content_sha256")
    if recorded is not None and recorded != content_digest(data):
        raise IntegrityError(
            f"{path} was edited after it was written (its content_sha256 no longer matches): rebuild the folder"
        )
    return data, hashlib.sha256(raw).hexdigest()
