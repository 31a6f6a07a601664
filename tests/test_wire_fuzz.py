"""Differential fuzzing of the hand-written ModelInferRequest reader (server/kserve/wire.py) against
protobuf's own parser: on random and mutated bytes both accept or both refuse, and what they accept is the
same message; and the BYTES tensors in them decode exactly or are refused as INVALID_ARGUMENT. Bounded for CI
by max_examples (a few seconds)."""

from __future__ import annotations

import json
import struct

import grpc
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import deserialize_bytes_tensor

from resnet_serve.formats.bytes_tensor import serialize
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.errors import ServeError
from resnet_serve.server.http.binary import parse_request
from resnet_serve.server.kserve.tensors import from_raw
from resnet_serve.server.kserve.wire import parse_infer_request

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def seed_message() -> bytes:
    """A realistic request: tensors, parameters, outputs, and raw contents between the other fields."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 3])
    tensor.parameters["binary_data_size"].int64_param = 12
    request = pb.ModelInferRequest(
        model_name="m",
        model_version="1",
        id="abc",
        inputs=[tensor, pb.ModelInferRequest.InferInputTensor(name="b", datatype="BYTES", shape=[1])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
        raw_input_contents=[struct.pack("<3f", 1, 2, 3), b"\x03\x00\x00\x00abc"],
    )
    request.parameters["timeout"].int64_param = 5
    data = request.SerializeToString()
    # Fields in any order are valid protobuf: move a tensor's bytes to the front too.
    first = pb.ModelInferRequest(raw_input_contents=[b"\x00" * 8]).SerializeToString()
    return first + data


def outcome(data: bytes, parse: object) -> tuple[str, object]:
    try:
        if parse is parse_infer_request:
            parsed = parse_infer_request(data, zero_copy_min_bytes=0)  # always the hand-written walk
            return "ok", (parsed.message.SerializeToString(), [bytes(r) for r in parsed.raw])
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return "refused", None
    raw = list(message.raw_input_contents)
    message.ClearField("raw_input_contents")
    return "ok", (message.SerializeToString(), raw)


def check(data: bytes) -> None:
    mine = outcome(data, parse_infer_request)
    theirs = outcome(data, pb.ModelInferRequest.FromString)
    assert mine == theirs, data


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_parse_as_protobuf_parses_them(data: bytes) -> None:
    check(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(seed_message())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "varint"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:  # a field with any tag and wire type (groups, fixed, a field 7 that is not bytes, ...)
            tag = draw(st.integers(0, 2**32)) | draw(st.sampled_from([0x38, 0x3A, 0x3B, 0x3C, 0x39, 0x3D]))
            data[at:at] = _varint(tag) + draw(st.binary(max_size=10))
    return bytes(data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@FUZZ
@given(mutated())
def test_mutated_requests_parse_as_protobuf_parses_them(data: bytes) -> None:
    check(data)


def test_groups_and_a_mistyped_field_7_are_what_protobuf_says() -> None:
    seed = seed_message()
    for extra in (
        _varint(0x7B) + b"\x08\x01" + _varint(0x7C),  # a well-formed group in an unknown field 15
        _varint(0x38) + b"\x05",  # field 7 as a varint: an unknown field to protobuf
        _varint(0x3B),  # an unterminated group
    ):
        check(seed + extra)


# ------------------------------------------------------------------------------------------ BYTES tensors


@st.composite
def bytes_tensors(draw: st.DrawFn) -> tuple[list[int], bytes]:
    """A shape and its serialised BYTES elements, then mutated: prefixes flipped (huge lengths included),
    the buffer cut or extended, bytes inserted."""
    elements = draw(st.lists(st.binary(max_size=12), max_size=6))
    shape = [len(elements)] if draw(st.booleans()) else [1, len(elements)]
    data = bytearray(serialize(elements))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        else:
            data[at:at] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
    return shape, bytes(data)


@FUZZ
@given(bytes_tensors())
def test_bytes_tensors_decode_exactly_or_are_invalid_argument(case: tuple[list[int], bytes]) -> None:
    shape, data = case
    try:
        array = from_raw("t", "BYTES", shape, memoryview(data))
    except ServeError as exc:
        assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 't'" in exc.message
        return
    assert array.shape == tuple(shape)
    assert serialize(array.reshape(-1).tolist()) == data  # every byte accounted for, nothing dropped
    assert deserialize_bytes_tensor(data).tolist() == array.reshape(-1).tolist()  # tritonclient agrees


# Any JSON value, some strings with a lone surrogate (json.dumps writes it as a \ud800-style escape).
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.tuples(st.text(max_size=2), st.integers(0xD800, 0xDFFF).map(chr)).map("".join),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=12,
)


@FUZZ
@given(JSON_VALUES, st.lists(st.integers(-2, 5), max_size=3))
def test_bytes_json_data_over_http_packs_exactly_or_is_invalid_argument(
    data: object, shape: list[int]
) -> None:
    """An HTTP body's BYTES `data` (server/http/binary.py): whatever JSON it holds, the request is refused as
    INVALID_ARGUMENT or its raw tensor holds exactly the strings, UTF-8 encoded, in row-major order."""
    body = json.dumps({"inputs": [{"name": "t", "datatype": "BYTES", "shape": shape, "data": data}]})
    try:
        parsed = parse_request(body.encode(), None, "m", "")
    except ServeError as exc:
        assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
        return
    flat = data if isinstance(data, list) else [data]
    while any(isinstance(item, list) for item in flat):
        flat = [leaf for item in flat for leaf in (item if isinstance(item, list) else [item])]
    assert all(isinstance(item, str) for item in flat)
    (raw,) = parsed.incoming.raw
    assert bytes(raw) == serialize(item.encode() for item in flat)  # type: ignore[union-attr]
