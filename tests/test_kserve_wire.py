"""The zero-copy ModelInferRequest deserializer agrees with protobuf on every request."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.kserve import wire as kserve_wire
from resnet_serve.server.kserve.wire import parse_infer_request

names = st.text(min_size=0, max_size=12)


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    request = pb.ModelInferRequest(model_name=draw(names), model_version=draw(names), id=draw(names))
    for key in draw(st.lists(names, max_size=3)):
        request.parameters[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(names), datatype="FP32")
        tensor.shape.extend(draw(st.lists(st.integers(-1, 2**40), max_size=4)))
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32, allow_nan=False), max_size=3)))
        request.raw_input_contents.append(draw(st.binary(max_size=300)))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(names)).parameters["classification"].int64_param = draw(
            st.integers(0, 9)
        )
    # Fields may arrive in any order on the wire: put the tensor bytes (tag 0x3A) first, between or last.
    fields = _top_level_fields(request.SerializeToString())
    raw = [f for f in fields if f[0] == 0x3A]
    rest = [f for f in fields if f[0] != 0x3A]
    cut = draw(st.integers(0, len(rest)))
    return b"".join(rest[:cut] + raw + rest[cut:])


def _top_level_fields(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        start = pos
        tag, pos = kserve_wire._varint(data, pos)
        if tag & 7 == 2:
            length, pos = kserve_wire._varint(data, pos)
            pos += length
        else:
            _, pos = kserve_wire._varint(data, pos)
        out.append(data[start:pos])
    return out


@settings(max_examples=60, deadline=None)
@given(infer_requests(), st.booleans())
def test_zero_copy_parse_equals_protobuf(data: bytes, zero_copy: bool) -> None:
    expected = pb.ModelInferRequest.FromString(data)
    parsed = parse_infer_request(data, zero_copy_min_bytes=0 if zero_copy else 1 << 30)
    assert [bytes(b) for b in parsed.raw] == list(expected.raw_input_contents)
    expected.ClearField("raw_input_contents")
    assert parsed.message == expected


def test_large_tensor_bytes_are_views_of_the_received_buffer() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    request.raw_input_contents.append(b"\x01" * (4 * 3 * 224 * 224))
    data = request.SerializeToString()
    parsed = parse_infer_request(data)
    assert isinstance(parsed.raw[0], memoryview) and parsed.raw[0].obj is data
    assert parsed.message.inputs[0].name == "input" and not parsed.message.raw_input_contents


@pytest.mark.parametrize("cut", [1, 5, 100, -1])
def test_truncated_request_is_a_decode_error(cut: int) -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.raw_input_contents.append(b"\0" * 200)
    with pytest.raises(DecodeError):
        parse_infer_request(request.SerializeToString()[:cut], zero_copy_min_bytes=0)
