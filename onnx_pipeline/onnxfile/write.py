"""The one streaming writer of ONNX files: a model's graph plus its weights, in one file or with a data file.

``onnx.save_model`` on a model loaded with its weights holds them twice (the tensors and the
serialised bytes) and took 8 s for VGG16 here. ``write_model`` writes the same protobuf by
streaming: the small parts of the model are serialised, each weight's bytes are copied straight
from where they are (an in-memory array, a range of an external data file, the tensor's own
``raw_data``) into the output. Fields are written in field-number order, so a single file is
byte for byte what ``onnx.save_model`` writes. Memory stays flat; each file's sha256 is computed
while writing (in a second thread: sha256 releases the GIL).

With external data, every tensor of at least ``EXTERNAL_MIN_BYTES`` goes to ``<file>.data``
(page-aligned, so onnxruntime can map it), referenced by a relative location: the pair can be
moved together to any folder.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from onnx_pipeline.errors import BundleError
from onnx_pipeline.onnxfile.parts import mapping_of, release_mapping, tensor_header
from onnx_pipeline.onnxfile.scan import varint

#: protobuf cannot serialise a single message over 2 GiB: bigger models must use external data
PROTOBUF_LIMIT = 2**31 - 1
#: a single file is written only when the model stays this far under PROTOBUF_LIMIT
_HEADROOM = 64 << 20
#: with external data, tensors at least this large (bytes) go to the data file
EXTERNAL_MIN_BYTES = 1024
_CHUNK = 8 << 20
_PAGE = 4096
_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data


def _key(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field."""
    return varint((number << 3) | 2) + varint(length)


def split_fields(message: Any, number: int) -> tuple[bytes, bytes]:
    """``message`` serialised as (its fields numbered below ``number``, those above), without field ``number``.

    Protobuf writes fields in number order, so ``head + field + tail`` is the message's own encoding.
    """
    head, tail = type(message)(), type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.number == number:
            continue
        target = head if descriptor.number < number else tail
        if descriptor.is_repeated:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)
    return head.SerializeToString(), tail.SerializeToString()


@dataclass(frozen=True)
class WrittenModel:
    """What ``write_model`` wrote: the model file, its data file (relative name) if any, their sha256."""

    path: Path
    sha256: str
    data_file: str | None = None
    data_sha256: str | None = None
    #: bytes written, model and data file together
    size: int = 0

    def hashes(self, folder: Path) -> dict[str, str]:
        """The written files' digests by POSIX path relative to ``folder`` (``hash_folder(known=...)``)."""
        rel = self.path.parent.relative_to(folder)
        known = {(rel / self.path.name).as_posix(): self.sha256}
        if self.data_file is not None and self.data_sha256 is not None:
            known[(rel / self.data_file).as_posix()] = self.data_sha256
        return known


@dataclass
class _Tensor:
    """One initializer to write: its header (the TensorProto without data) and where its bytes come from.

    ``source`` is where the bytes are: an array, ``(data file, offset)``, or the original TensorProto
    (its ``raw_data``, or the whole tensor as it is when ``length`` is 0). ``offset`` is its place
    in the data file once external.
    """

    proto: Any
    length: int
    source: Any
    offset: int | None = None

    def chunks(self) -> Iterable[bytes | memoryview]:
        if isinstance(self.source, np.ndarray):
            view = memoryview(_little_endian(self.source)).cast("B")  # type: ignore[arg-type]
            for start in range(0, len(view), _CHUNK):
                yield view[start : start + _CHUNK]
            mapped = mapping_of(self.source)
            if mapped is not None:  # a view of a mapped file: its pages need not stay resident once copied
                release_mapping(mapped)
        elif isinstance(self.source, tuple):
            yield from _read_range(self.source[0], self.source[1], self.length)
        else:
            yield self.source.raw_data  # one tensor's bytes at a time

    def encoded(self) -> tuple[bytes, int, bytes]:
        """(the bytes before the data, the data's length here, the bytes after it)."""
        if self.length == 0:
            return self.source.SerializeToString(), 0, b""
        if self.offset is not None:
            return self.proto.SerializeToString(), 0, b""
        head, tail = split_fields(self.proto, _TENSOR_RAW_DATA)
        return head + _key(_TENSOR_RAW_DATA, self.length), self.length, tail

    def size(self) -> int:
        """Bytes of this tensor's encoding in the model file."""
        if self.length == 0:
            return int(self.source.ByteSize())
        if self.offset is not None:
            return int(self.proto.ByteSize())
        return int(self.proto.ByteSize()) + len(_key(_TENSOR_RAW_DATA, self.length)) + self.length


def _little_endian(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


def _read_range(source: Path, offset: int, length: int) -> Iterable[bytes]:
    with open(source, "rb") as handle:
        handle.seek(offset)
        remaining = length
        while remaining:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                raise OSError(f"{source} ends before offset {offset + length}: the external data is truncated")
            yield chunk
            remaining -= len(chunk)


def _external_info(tensor: Any) -> tuple[str, int, int | None]:
    entries = {e.key: e.value for e in tensor.external_data}
    length = entries.get("length")
    return entries["location"], int(entries.get("offset", 0)), int(length) if length is not None else None


def _prepare(
    tensor: Any, weights: Mapping[str, np.ndarray], base: Path | None, min_bytes: int, explicit: bool, keep: bool
) -> _Tensor:
    """Where ``tensor``'s bytes come from: ``weights``, its external data under ``base``, or itself."""
    import onnx

    if tensor.name in weights:
        array = weights[tensor.name]
        meta = tensor_header(tensor)
        if explicit:
            meta.data_location = onnx.TensorProto.DEFAULT
        meta.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        del meta.dims[:]
        meta.dims.extend(array.shape)
        return _Tensor(meta, array.nbytes, array)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        if keep:
            return _Tensor(tensor, 0, tensor)
        if base is None:
            raise ValueError(f"initializer {tensor.name!r} has external data: give write_model the folder it is in")
        location, offset, length = _external_info(tensor)
        data_file = Path(base) / location
        if length is None:
            length = data_file.stat().st_size - offset
        meta = tensor_header(tensor)
        if explicit:
            meta.data_location = onnx.TensorProto.DEFAULT
        return _Tensor(meta, length, (data_file, offset))
    if tensor.HasField("raw_data") and tensor.ByteSize() >= min_bytes:
        meta = tensor_header(tensor)
        rest = tensor.ByteSize() - meta.ByteSize()  # = key + varint(length) + length
        length = next(n for k in range(1, 11) if len(varint(n := rest - 1 - k)) == k)
        return _Tensor(meta, length, tensor)
    return _Tensor(tensor, 0, tensor)


class _HashedFile:
    """A file opened for writing whose sha256 is computed in a second thread while it is written."""

    def __init__(self, path: Path) -> None:
        self.handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.digest = hashlib.sha256()
        self.size = 0
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._hash, daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.digest.update(chunk)

    def write(self, chunk: bytes | memoryview) -> None:
        self.handle.write(chunk)
        self._queue.put(chunk)
        self.size += len(chunk)

    def pad_to_page(self) -> None:
        if self.size % _PAGE:
            self.write(b"\0" * (_PAGE - self.size % _PAGE))

    def close(self) -> str:
        self._queue.put(None)
        self._thread.join()
        self.handle.close()
        return self.digest.hexdigest()


def _externalise(tensors: list[_Tensor], data_name: str, min_bytes: int) -> list[_Tensor]:
    """Point every tensor of at least ``min_bytes`` at its page-aligned place in ``data_name``."""
    import onnx

    placed: list[_Tensor] = []
    offset = 0
    for tensor in tensors:
        if tensor.length < min_bytes:
            continue
        offset += (-offset) % _PAGE
        meta = tensor.proto
        meta.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(tensor.length))):
            entry = meta.external_data.add()
            entry.key, entry.value = key, value
        tensor.offset = offset
        placed.append(tensor)
        offset += tensor.length
    return placed


def write_model(
    model: Any,
    path: Path,
    *,
    weights: Mapping[str, np.ndarray] | None = None,
    base: Path | None = None,
    external: bool | None = None,
    order: Iterable[str] | None = None,
    min_external_bytes: int = EXTERNAL_MIN_BYTES,
    explicit_location: bool = False,
    keep_external: bool = False,
) -> WrittenModel:
    """Write ``model`` to ``path``, each initializer's bytes streamed once; ``model`` is not modified.

    - ``weights``: arrays for initializers of those names (the model's tensors of those names only give
      the name and what else they carry; type and shape come from the array), e.g. ``ModelParts.weights``.
    - ``base``: the folder the model's own external data locations are relative to.
    - ``external``: True, tensors of at least ``min_external_bytes`` go to ``<path>.data``; False, one
      file (``BundleError`` over the 2 GiB protobuf limit); None, one file when it fits, else external.
    - ``order``: initializers to write last, in this order (the others keep the graph's order).
    - ``explicit_location``: tensors whose bytes come from elsewhere say ``data_location: DEFAULT`` when
      inline (as ``onnx.load`` leaves them); by default the field is left out (as ``onnx.save`` of an
      in-memory tensor writes it).
    - ``keep_external``: the model's externally stored tensors keep referring to their data files
      (relative to the folder ``path`` is in) instead of being copied.
    """
    path = Path(path)
    weights = weights or {}
    initializers = list(model.graph.initializer)
    if order is not None:
        by_name = {t.name: t for t in initializers}
        last = [by_name[n] for n in order]
        chosen = {id(t) for t in last}
        initializers = [t for t in initializers if id(t) not in chosen] + last
    tensors = [_prepare(t, weights, base, min_external_bytes, explicit_location, keep_external) for t in initializers]
    fits = sum(t.size() for t in tensors) < PROTOBUF_LIMIT - _HEADROOM
    if external is False and not fits:
        total = sum(t.size() for t in tensors)
        raise BundleError(f"the model's weights are {total / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit")
    data_name = path.name + ".data"
    data_path = path.with_name(data_name)
    placed = _externalise(tensors, data_name, min_external_bytes) if external or not fits else []
    data_sha, data_size = None, 0
    if placed:
        if any(isinstance(t.source, tuple) and t.source[0].resolve() == data_path.resolve() for t in placed):
            raise ValueError(f"write_model would overwrite {data_path} while reading it: write to another name")
        data_sha, data_size = _write_data(data_path, placed)
    sha, size = _write_graph(model, path, tensors)
    return WrittenModel(path, sha, data_name if placed else None, data_sha, size + data_size)


def _write_data(data_path: Path, placed: list[_Tensor]) -> tuple[str, int]:
    out = _HashedFile(data_path)
    try:
        for tensor in placed:
            out.pad_to_page()
            for chunk in tensor.chunks():
                out.write(chunk)
    finally:
        digest = out.close()
    return digest, out.size


def _write_graph(model: Any, path: Path, tensors: list[_Tensor]) -> tuple[str, int]:
    model_head, model_tail = split_fields(model, _MODEL_GRAPH)
    graph_head, graph_tail = split_fields(model.graph, _GRAPH_INITIALIZER)
    graph_len = len(graph_head) + len(graph_tail)
    for tensor in tensors:
        size = tensor.size()
        graph_len += len(_key(_GRAPH_INITIALIZER, size)) + size
    out = _HashedFile(path)
    try:
        out.write(model_head + _key(_MODEL_GRAPH, graph_len) + graph_head)
        for tensor in tensors:
            before, data_length, after = tensor.encoded()
            out.write(_key(_GRAPH_INITIALIZER, tensor.size()) + before)
            if data_length:
                for chunk in tensor.chunks():
                    out.write(chunk)
            out.write(after)
        out.write(graph_tail + model_tail)
    finally:
        digest = out.close()
    return digest, out.size


def inline_external_data(path: Path, out: Path) -> str:
    """Write ``path`` (a model whose weights are external) to ``out`` with every weight inline; its sha256.

    ``out`` must differ from ``path``; the data files are left.
    """
    from onnx_pipeline.onnxfile.model import load_onnx

    path = Path(path)
    model = load_onnx(path, load_external_data=False)
    return write_model(model, out, base=path.parent, external=False).sha256
