"""A tensor file: a tiny header and float32 data, what the torchscript bundle's C++ program reads.

C++ has no standard image decoder, so ``onnx-pipeline preprocess`` applies the bundle's preprocessing
here and writes the model input in this layout (all little-endian)::

    offset  size      field
    0       8         magic b"OPTENSOR"
    8       4         uint32 version (1)
    12      4         uint32 dtype (1: float32)
    16      4         uint32 ndim (1..8)
    20      4         uint32 reserved (0)
    24      8 * ndim  int64 dims
    ...     4 * prod  float32 data, C order

numpy only (device-side code).
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from onnx_pipeline.errors import InputError

MAGIC = b"OPTENSOR"
VERSION = 1
FLOAT32 = 1
MAX_DIMS = 8
_HEADER = struct.Struct("<8sIIII")


def encode_tensor(array: np.ndarray) -> bytes:
    """The bytes of a tensor file holding ``array`` (converted to float32, C order)."""
    values = np.ascontiguousarray(array, dtype="<f4")
    if not 1 <= values.ndim <= MAX_DIMS:
        raise InputError(f"a tensor file holds 1 to {MAX_DIMS} dimensions, not {values.ndim}")
    dims = struct.pack(f"<{values.ndim}q", *values.shape)
    return _HEADER.pack(MAGIC, VERSION, FLOAT32, values.ndim, 0) + dims + values.tobytes()


def write_tensor(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as a tensor file at ``path`` (atomically: a temporary file renamed)."""
    path = Path(path)
    data = encode_tensor(array)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def decode_tensor(data: bytes, what: str = "the tensor file") -> np.ndarray:
    """The float32 array held in the bytes of a tensor file; a malformed one is an ``InputError``."""
    if len(data) < _HEADER.size:
        raise InputError(f"{what} is too short to be a tensor file: write it with onnx-pipeline preprocess")
    magic, version, dtype, ndim, _ = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise InputError(f"{what} is not a tensor file (no OPTENSOR header): write it with onnx-pipeline preprocess")
    if version != VERSION or dtype != FLOAT32 or not 1 <= ndim <= MAX_DIMS:
        raise InputError(f"{what}: unsupported tensor file (version {version}, dtype {dtype}, {ndim} dims)")
    end = _HEADER.size + 8 * ndim
    if len(data) < end:
        raise InputError(f"{what} is truncated: write it again")
    shape = struct.unpack_from(f"<{ndim}q", data, _HEADER.size)
    if any(d <= 0 for d in shape):
        raise InputError(f"{what}: dimensions must be positive, got {list(shape)}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != end + 4 * count:
        raise InputError(f"{what} holds {len(data) - end} data bytes, its header says {4 * count}: write it again")
    return np.frombuffer(data, dtype="<f4", offset=end).reshape(shape).astype(np.float32)


def read_tensor(path: Path) -> np.ndarray:
    """The array in the tensor file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a file: give a tensor file written by onnx-pipeline preprocess")
    return decode_tensor(path.read_bytes(), str(path))
