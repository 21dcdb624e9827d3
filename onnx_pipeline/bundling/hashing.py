"""Hashing a bundle's files while it is being built, instead of reading them all again at the end.

Each builder's files are hashed in a second thread as soon as the builder returns (sha256 releases
the GIL, so this overlaps the next builder's work on the other core); files a builder wrote through
``onnxfile.write_model`` come with their digest already. At the end, ``digests`` returns what
``manifest.hash_folder`` would, re-hashing any file that changed (size, mtime or inode) since.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from onnx_pipeline.files import sha256_file
from onnx_pipeline.manifest import hash_folder

_Stat = tuple[int, int, int]


def _stat(path: Path) -> _Stat:
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns, info.st_ino


class FileHasher:
    """sha256 of the files under ``root``, computed as they are finished (a context manager)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash")
        self._jobs: dict[str, tuple[Future[str], _Stat]] = {}
        self._known: dict[str, tuple[str, _Stat]] = {}

    def __enter__(self) -> FileHasher:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add_known(self, digests: Mapping[str, str]) -> None:
        """Digests computed while writing (``root``-relative POSIX path → sha256)."""
        for rel, digest in digests.items():
            path = self.root / rel
            if path.is_file():
                self._known[rel] = (digest, _stat(path))

    def hash_new(self, *, skip: tuple[str, ...] = ()) -> None:
        """Start hashing every file not hashed yet (``skip``: top-level names left out)."""
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if rel.split("/", 1)[0] in skip or rel in self._jobs or rel in self._known:
                continue
            if path.is_file() and not path.is_symlink():
                self._jobs[rel] = (self._pool.submit(sha256_file, path), _stat(path))

    def digests(self, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
        """``hash_folder(root, exclude=...)``, reusing every digest whose file is unchanged."""
        known: dict[str, str] = {}
        for rel, (future, stat) in self._jobs.items():
            path = self.root / rel
            if path.is_file() and _stat(path) == stat:
                known[rel] = future.result()
        for rel, (digest, stat) in self._known.items():
            path = self.root / rel
            if path.is_file() and _stat(path) == stat:
                known[rel] = digest
        return hash_folder(self.root, exclude=exclude, known=known)
