"""The inputs and outputs an ONNX file declares (names, element types, shapes), read without its weights.

Reading a folder someone else exported (an optimum export: engine/optimum_folder.py) starts from what
its graphs take and return. `onnx.load` would need the `onnx` package, which the runtime does not
depend on, and an ONNX Runtime session would load every weight (3.4 GB for SD 1.5's UNet) just to
name its inputs. So this walks the protobuf wire format itself: ModelProto.graph (field 7), and in the
GraphProto only `input` (11) and `output` (12); every other field, initializers included, is skipped
by its length with a seek, so a graph with its weights inline costs a few reads, not a load.

Message layouts (onnx/onnx.proto3): ValueInfoProto {name 1, type 2}; TypeProto {tensor_type 1};
TypeProto.Tensor {elem_type 1, shape 2}; TensorShapeProto {dim 1}; Dimension {dim_value 1, dim_param 2}.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ModelError

# TensorProto.DataType -> numpy dtype name (the ones a diffusion graph's inputs and outputs use).
ELEMENT_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                 11: "float64", 16: "bfloat16"}

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_MODEL_GRAPH, _GRAPH_INPUT, _GRAPH_OUTPUT = 7, 11, 12


@dataclass(frozen=True)
class TensorSignature:
    name: str
    dtype: str  # numpy dtype name, or "type N" for an element type not in ELEMENT_TYPES
    shape: tuple[int | str, ...]  # ints fixed, strings the exporter's symbolic axis names ("" unnamed)


@dataclass(frozen=True)
class GraphSignature:
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]

    def input(self, name: str) -> TensorSignature | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSignature | None:
        return next((t for t in self.outputs if t.name == name), None)


class _Truncated(Exception):
    pass


def _varint(stream: BinaryIO) -> int:
    result = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise _Truncated
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(stream: BinaryIO, end: int) -> Iterator[tuple[int, int, int, tuple[int, int]]]:
    """(field number, wire type, varint value, (offset, length) of a length-delimited value) up to offset
    `end`; the stream is left past each value, so a caller reads only the fields it wants."""
    while stream.tell() < end:
        key = _varint(stream)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            yield number, wire, _varint(stream), (0, 0)
        elif wire == _LENGTH:
            length = _varint(stream)
            start = stream.tell()
            if start + length > end:
                raise _Truncated
            yield number, wire, 0, (start, length)
            stream.seek(start + length)
        elif wire in (_FIXED64, _FIXED32):
            stream.seek(8 if wire == _FIXED64 else 4, io.SEEK_CUR)
            yield number, wire, 0, (0, 0)
        else:
            raise ValueError(f"wire type {wire} (groups are not used by ONNX)")


def _bytes(stream: BinaryIO, span: tuple[int, int]) -> bytes:
    here = stream.tell()
    stream.seek(span[0])
    data = stream.read(span[1])
    stream.seek(here)
    if len(data) != span[1]:
        raise _Truncated
    return data


def _message(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(field number, varint value, bytes of a length-delimited value) of a small message held in memory."""
    stream = io.BytesIO(data)
    for number, wire, value, span in _fields(stream, len(data)):
        yield number, value, (_bytes(stream, span) if wire == _LENGTH else b"")


def _tensor(data: bytes) -> TensorSignature:
    name, dtype, dims = "", "type 0", []
    for number, _, payload in _message(data):
        if number == 1:
            name = payload.decode()
        elif number == 2:  # TypeProto
            for t_number, _, tensor_type in _message(payload):
                if t_number != 1:  # not a tensor (sequence, map, optional): left as "type 0"
                    continue
                for f_number, f_value, f_payload in _message(tensor_type):
                    if f_number == 1:
                        dtype = ELEMENT_TYPES.get(f_value, f"type {f_value}")
                    elif f_number == 2:  # TensorShapeProto
                        dims += [_dimension(dim) for d_number, _, dim in _message(f_payload) if d_number == 1]
    return TensorSignature(name=name, dtype=dtype, shape=tuple(dims))


def _dimension(data: bytes) -> int | str:
    for number, value, payload in _message(data):
        if number == 1:
            return value
        if number == 2:
            return payload.decode()
    return ""


def read_signature(path: Path) -> GraphSignature:
    """The graph inputs and outputs `path` declares. Initializers listed as inputs (older exporters)
    are not told apart here; an exporter of opset 9 or later (every one this engine reads) lists none."""
    inputs: list[TensorSignature] = []
    outputs: list[TensorSignature] = []
    try:
        with path.open("rb") as stream:
            size = path.stat().st_size
            graph = next((span for n, w, _, span in _fields(stream, size) if n == _MODEL_GRAPH and w == _LENGTH),
                         None)
            if graph is None:
                raise ModelError(f"{path} is not an ONNX model: it has no graph")
            stream.seek(graph[0])
            for number, wire, _, span in _fields(stream, graph[0] + graph[1]):
                if wire == _LENGTH and number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                    tensor = _tensor(_bytes(stream, span))
                    (inputs if number == _GRAPH_INPUT else outputs).append(tensor)
    except (_Truncated, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not a readable ONNX model (truncated or damaged: {exc or 'ends early'})") from None
    return GraphSignature(inputs=tuple(inputs), outputs=tuple(outputs))
