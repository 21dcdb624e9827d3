"""File helpers shared by the steps: hashing, atomic output folders, JSON writing."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

from onnx_pipeline.errors import InputError, OutputExistsError, first_line

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_jsonable(value: Any) -> Any:
    """The one JSON conversion for results and manifests.

    A dataclass becomes a dict of its fields (a field with ``metadata={"json": False}`` is left out),
    plus the properties named in the class's ``__json_extra__``; a Path becomes a POSIX string; a
    non-finite float becomes ``"inf"``, ``"-inf"`` or ``"nan"`` (strict JSON has none); numpy scalars and
    arrays become numbers and lists; tuples and sets become lists; mappings keep their order.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("json", True)
        }
        for name in getattr(type(value), "__json_extra__", ()):
            out[name] = to_jsonable(getattr(value, name))
        return out
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return [to_jsonable(v) for v in sorted(value, key=str)]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return to_jsonable(value.tolist())
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(data: Any) -> str:
    """``data`` as indented JSON text (order kept: it is meaningful), through ``to_jsonable``."""
    return json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON (see ``json_text``)."""
    Path(path).write_text(json_text(data), encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a missing or corrupt file into an ``InputError``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist: is this a run folder or bundle written by onnx-pipeline?") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a JSON file: rebuild it with onnx-pipeline") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{path} is not valid JSON ({first_line(exc)}): re-create it with onnx-pipeline") from None


_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"


@contextlib.contextmanager
def atomic_output_dir(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` only on success.

    A failed or interrupted run (SIGINT, or SIGTERM turned into an exception by the CLI) leaves
    nothing at ``target`` and removes its temporary folder; an existing ``target`` is kept unless
    ``force``. The check is made again at the final rename, atomically: an output that appeared while
    the run worked is never replaced without ``force``. Leftovers of a killed run (SIGKILL, power
    loss) carry their process id in their name and are removed by the next run on the same output.
    """
    target = Path(target)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists: choose another --output or pass --force to replace it")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{_TMP_MARK}{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write in {parent} ({exc.strerror}): choose another --output") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any new folder
    try:
        yield tmp
        _install(tmp, target, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install(tmp: Path, target: Path, *, force: bool) -> None:
    """Rename ``tmp`` to ``target``; without ``force`` never replace what is there (decided at the rename)."""
    if force and target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}{_OLD_MARK}{os.getpid()}-", dir=tmp.parent))
        os.replace(target, old / "previous")
        try:
            _rename_noreplace(tmp, target)
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    _rename_noreplace(tmp, target)


def _rename_noreplace(source: Path, target: Path) -> None:
    """``rename(source, target)`` that fails when ``target`` exists, atomically where the kernel allows it."""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), rename_noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise OutputExistsError(
                f"{target} appeared while this run worked and was kept: nothing was written there "
                "(run again with another --output, or --force to replace it)"
            )
        if code not in (errno.ENOSYS, errno.EINVAL):  # anything but "not supported here"
            raise OSError(code, os.strerror(code), str(target))
    if target.exists():
        raise OutputExistsError(
            f"{target} appeared while this run worked and was kept: nothing was written there "
            "(run again with another --output, or --force to replace it)"
        )
    os.rename(source, target)


def remove_leftovers(target: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` beside ``target`` whose process is gone; returns them."""
    removed = []
    parent = target.parent if str(target.parent) else Path(".")
    for mark in (_TMP_MARK, _OLD_MARK):
        for path in parent.glob(f".{glob.escape(target.name)}{mark}*"):
            pid_text = path.name[len(target.name) + 1 + len(mark) :].split("-", 1)[0]
            if not pid_text.isdigit() or _alive(int(pid_text)) or not path.is_dir():
                continue
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s, left by an interrupted run (process %s)", path, pid_text)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def release_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's ``malloc_trim``).

    A large model let go leaves its activations' pages in the heap; the next stage (an onnxruntime
    session loading the same weights) would otherwise add its peak on top of them.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
