"""Zero-copy decoding of ModelInferRequest's tensor bytes.

protobuf copies a bytes field twice on its way to Python: once into its own memory when the message is
parsed, and again into a new `bytes` object each time the field is read. For a ResNet input (600 KB per
image) that is two copies per request for nothing. So the server's deserializer walks the top-level fields
of the serialized request itself: the `raw_input_contents` entries (field 7) become memoryviews into the
bytes gRPC handed over, and only the remaining fields — names, shapes, parameters, a few hundred bytes — go
through protobuf. Requests below `ZERO_COPY_MIN_BYTES` are parsed by protobuf alone (the walk would cost more
than the copies it saves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError

from resnet_serve.protos import grpc_service_pb2 as pb

RAW_INPUT_CONTENTS: Final = 7  # ModelInferRequest.raw_input_contents
ZERO_COPY_MIN_BYTES: Final = 32 * 1024

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class InferRequest:
    """A ModelInferRequest whose raw_input_contents are kept apart, as zero-copy views."""

    message: Any  # pb.ModelInferRequest without raw_input_contents
    raw: list[memoryview] | list[bytes]
    error: str | None = None  # why the request could not be parsed (then message is empty)


def parse_infer_request(data: bytes, zero_copy_min_bytes: int = ZERO_COPY_MIN_BYTES) -> InferRequest:
    """A serialized ModelInferRequest with its raw_input_contents apart; raises DecodeError if malformed.

    protobuf is the authority: whatever the walk below does not understand (groups, a field 7 that is not
    length-delimited, a truncated message) is handed to protobuf's own parser, which accepts or refuses it.
    tests/test_wire_fuzz.py checks the two agree on random and mutated messages."""
    if len(data) >= zero_copy_min_bytes:
        try:
            return _walk(data)
        except DecodeError:
            pass
    message = pb.ModelInferRequest.FromString(data)
    raw = list(message.raw_input_contents)
    message.ClearField("raw_input_contents")
    return InferRequest(message, raw)


def _walk(data: bytes) -> InferRequest:
    """The zero-copy parse: raw_input_contents as views, the other fields through protobuf."""
    view = memoryview(data)
    tensors: list[memoryview] = []
    rest: list[memoryview] = []
    end = len(data)
    pos = 0
    while pos < end:
        start = pos
        tag, pos = _varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            pos += length
        elif field == RAW_INPUT_CONTENTS:
            raise DecodeError("raw_input_contents must be length-delimited")
        elif wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise DecodeError("truncated message")
        if field == RAW_INPUT_CONTENTS:
            tensors.append(view[pos - length : pos])
        else:
            rest.append(view[start:pos])
    # Concatenated fields parse as the merge of those fields, in order: exactly the message minus field 7.
    return InferRequest(pb.ModelInferRequest.FromString(b"".join(rest)), tensors)


def deserialize_infer_request(data: bytes) -> InferRequest:
    """The gRPC request deserializer: a malformed request comes back with `error` set instead of raising,
    because gRPC would answer a deserializer's exception UNKNOWN, with a traceback in the server log."""
    try:
        return parse_infer_request(data)
    except DecodeError as exc:
        return InferRequest(pb.ModelInferRequest(), [], error=str(exc))


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
