"""Reading a single-file ONNX model without parsing its weights: where each large ``raw_data`` lies.

A single-file model is a protobuf whose weights are ``raw_data`` byte strings inside the graph's
initializers. ``split_raw_data`` walks the message's fields (keys and lengths only: a few hundred
steps for a CNN, never the bytes of a weight) and returns the model without its large ``raw_data``
fields, plus where each of them lies in the file. ``load_parts`` then maps the file and views each
weight in place: no protobuf parse of 500 MB, no private copy of the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DATA_TYPE = 2
_TENSOR_RAW_DATA = 9
#: bytes per element of the ONNX element types raw_data may hold (TensorProto.DataType → itemsize)
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    start: int  # where the field's key starts
    value: int  # where its value starts
    end: int  # where it ends
    scalar: int = 0  # a varint's value


def _fields(buf: Any, start: int, end: int) -> Iterator[_Field]:
    pos = start
    while pos < end:
        key, value = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        scalar = 0
        if wire == 0:
            scalar, stop = _varint(buf, value)
        elif wire == 1:
            stop = value + 8
        elif wire == 2:
            length, value = _varint(buf, value)
            stop = value + length
        elif wire == 5:
            stop = value + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if stop > end:
            raise ValueError("a field runs past the end of its message: the file is truncated")
        yield _Field(number, wire, pos, value, stop, scalar)
        pos = stop


def _key(number: int, length: int) -> bytes:
    return varint((number << 3) | 2) + varint(length)


def _tensor(buf: Any, field: _Field, min_elements: int) -> tuple[bytes, tuple[int, int] | None]:
    """The tensor's encoding without a large raw_data, and that raw_data's (offset, length)."""
    parts = list(_fields(buf, field.value, field.end))
    data_type = next((f.scalar for f in parts if f.number == _TENSOR_DATA_TYPE and f.wire == 0), 0)
    raw = next((f for f in parts if f.number == _TENSOR_RAW_DATA and f.wire == 2), None)
    itemsize = _ITEMSIZE.get(data_type)
    if raw is None or itemsize is None or (raw.end - raw.value) // itemsize <= min_elements:
        return bytes(buf[field.start : field.end]), None
    body = b"".join(bytes(buf[f.start : f.end]) for f in parts if f is not raw)
    return _key(_GRAPH_INITIALIZER, len(body)) + body, (raw.value, raw.end - raw.value)


def split_raw_data(buf: Any, min_elements: int) -> tuple[bytes, list[tuple[int, int] | None]]:
    """``buf`` (a serialised ModelProto) without the raw_data of tensors over ``min_elements`` elements.

    Returns the smaller message and, per graph initializer in order, the (offset, length) in ``buf``
    of the raw_data left out (None where the tensor kept its data). ``ValueError`` if ``buf`` is not
    a well-formed message.
    """
    model = bytearray()
    found: list[tuple[int, int] | None] = []
    for field in _fields(buf, 0, len(buf)):
        if field.number != _MODEL_GRAPH or field.wire != 2:
            model += buf[field.start : field.end]
            continue
        graph = bytearray()
        for inner in _fields(buf, field.value, field.end):
            if inner.number == _GRAPH_INITIALIZER and inner.wire == 2:
                encoded, raw = _tensor(buf, inner, min_elements)
                graph += encoded
                found.append(raw)
            else:
                graph += buf[inner.start : inner.end]
        model += _key(_MODEL_GRAPH, len(graph)) + graph
    return bytes(model), found
