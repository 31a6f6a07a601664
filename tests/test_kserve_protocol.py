"""Our grpc_service.proto / model_config.proto are wire-compatible with Triton's, and tensors encode as
tritonclient encodes them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor
from hypothesis import given
from hypothesis import strategies as st

from resnet_serve.formats.bytes_tensor import deserialize, serialize
from resnet_serve.formats.errors import InvalidInput
from resnet_serve.server.errors import ServeError
from resnet_serve.server.kserve.tensors import from_contents, from_raw, top_k_strings


def _fields(file: FileDescriptor) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()

    def walk(message: Descriptor) -> None:
        for f in message.fields:
            target = f.message_type or f.enum_type
            out.add(
                (
                    message.full_name,
                    f.name,
                    f.number,
                    f.type,
                    f.is_repeated,
                    target.full_name if target else "",
                )
            )
        for nested in message.nested_types:
            walk(nested)
        for enum in message.enum_types:
            out.update((enum.full_name, v.name, v.number) for v in enum.values)

    for message in file.message_types_by_name.values():
        walk(message)
    for enum in file.enum_types_by_name.values():
        out.update((enum.full_name, v.name, v.number) for v in enum.values)
    for service in file.services_by_name.values():
        out.update(
            (service.full_name, m.name, m.input_type.full_name, m.output_type.full_name,
             m.client_streaming, m.server_streaming)
            for m in service.methods
        )  # fmt: skip
    return out


def test_every_field_and_rpc_we_define_is_tritons_with_the_same_number_and_type() -> None:
    # Both sets of modules load side by side because ours live in a private descriptor pool.
    from tritonclient.grpc import model_config_pb2 as triton_config
    from tritonclient.grpc import service_pb2 as triton_service

    from resnet_serve.protos import grpc_service_pb2, model_config_pb2

    ours = _fields(grpc_service_pb2.DESCRIPTOR) | _fields(model_config_pb2.DESCRIPTOR)
    theirs = _fields(triton_service.DESCRIPTOR) | _fields(triton_config.DESCRIPTOR)
    assert ours - theirs == set()
    # The service protocol itself (not just the ModelConfig subset) is complete.
    assert _fields(triton_service.DESCRIPTOR) - ours == set()


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_bytes_elements_round_trip_through_length_prefixes(elements: list[bytes]) -> None:
    from tritonclient.utils import serialize_byte_tensor

    raw = serialize(elements)
    if elements:
        assert raw == serialize_byte_tensor(np.array(elements, dtype=np.object_)).item()
    assert deserialize(raw) == elements


def test_truncated_bytes_tensor_is_rejected() -> None:
    raw = serialize([b"abcdef"])
    with pytest.raises(InvalidInput, match="element 0 says 6 bytes but only 5 remain"):
        deserialize(raw[:-1])
    with pytest.raises(InvalidInput, match="truncated"):
        deserialize(raw + b"\x01")
    with pytest.raises(InvalidInput, match="bytes follow the 1 BYTES elements"):
        deserialize(raw + raw, 1)
    with pytest.raises(InvalidInput, match="cannot hold 3 BYTES elements"):  # before splitting anything
        deserialize(raw, 3)


def test_raw_fp32_is_a_view_of_the_request_bytes_with_its_shape() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = x.tobytes()
    got = from_raw("x", "FP32", (3, 4), raw)
    np.testing.assert_array_equal(got, x)
    assert not got.flags.owndata  # no copy
    with pytest.raises(ServeError, match="expected 48 bytes"):
        from_raw("x", "FP32", (3, 4), raw[:-4])


def test_classification_orders_by_value_then_index_and_formats_like_std_to_string() -> None:
    scores = np.array([[0.5, 2.0, 0.5, -1.25]], dtype=np.float32)
    assert top_k_strings(scores, 3, ["a", "b", "c", "d"]) == [
        b"2.000000:1:b",
        b"0.500000:0:a",
        b"0.500000:2:c",
    ]
    # k beyond the classes is capped; indices without a label have no label part, as in Triton.
    assert top_k_strings(scores, 9, []) == [b"2.000000:1", b"0.500000:0", b"0.500000:2", b"-1.250000:3"]


def test_typed_contents_fill_the_shape_and_reject_out_of_range_values() -> None:
    from tritonclient.grpc import service_pb2

    contents = service_pb2.InferTensorContents(uint_contents=[0, 255, 7, 9])
    np.testing.assert_array_equal(from_contents("x", "UINT8", (2, 2), contents), [[0, 255], [7, 9]])
    with pytest.raises(ServeError, match="expected 6 values"):
        from_contents("x", "UINT8", (2, 3), contents)
    with pytest.raises(ServeError, match="out of range for UINT8"):
        from_contents("x", "UINT8", (1, 1), service_pb2.InferTensorContents(uint_contents=[256]))
