"""The HTTP inference body codec against tritonclient.http's own encoder and decoder: what it sends becomes
the gRPC path's request (raw tensors, parameters unchanged), and what the server answers decodes to the
same arrays."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_serve.formats.bytes_tensor import deserialize, serialize
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.errors import ServeError
from resnet_serve.server.http.binary import encode_response, parse_request

DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT64": np.int64, "BOOL": np.bool_}


def body_of(inputs: list[httpclient.InferInput], **kwargs: object) -> tuple[bytes, int | None]:
    body, json_length = httpclient.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return (body.encode() if isinstance(body, str) else body), json_length


@settings(max_examples=40, deadline=None)
@given(
    datatype=st.sampled_from(sorted(DTYPES)),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    binary=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tritonclient_inputs_arrive_as_the_raw_tensors_grpc_carries(
    datatype: str, shape: list[int], binary: bool, seed: int
) -> None:
    x: np.ndarray = np.random.default_rng(seed).normal(0, 50, shape).astype(DTYPES[datatype])
    tensor = httpclient.InferInput("x", shape, datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    body, json_length = body_of([tensor], request_id="r1", timeout=7)
    parsed = parse_request(body, json_length, "m", "2")
    message = parsed.incoming.message
    assert (message.model_name, message.model_version, message.id) == ("m", "2", "r1")
    assert message.parameters["timeout"].int64_param == 7
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("x", datatype, shape)]
    assert dict(message.inputs[0].parameters) == {}  # binary_data_size is the HTTP body's business
    assert bytes(parsed.incoming.raw[0]) == x.tobytes()
    # No outputs named: tritonclient asks for binary answers.
    assert parsed.wants_binary("anything")


def test_bytes_inputs_keep_their_length_prefixes() -> None:
    images = np.array([b"\x89PNG first", b"", b"third"], dtype=np.object_)
    tensor = httpclient.InferInput("images", [3], "BYTES")
    tensor.set_data_from_numpy(images)
    parsed = parse_request(*body_of([tensor]), "m", "")
    assert deserialize(parsed.incoming.raw[0]) == list(images)


@settings(max_examples=40, deadline=None)
@given(
    elements=st.lists(st.text(max_size=8), min_size=1, max_size=6),
    binary=st.booleans(),
    nested=st.booleans(),
)
def test_string_tensors_from_tritonclient_json_or_binary_arrive_serialised_and_answer_back(
    elements: list[str], binary: bool, nested: bool
) -> None:
    array = np.array([e.encode() for e in elements], dtype=np.object_)
    shape = [1, len(elements)] if nested else [len(elements)]
    tensor = httpclient.InferInput("s", shape, "BYTES")
    tensor.set_data_from_numpy(array.reshape(shape), binary_data=binary)
    parsed = parse_request(*body_of([tensor]), "m", "")
    raw = bytes(parsed.incoming.raw[0])
    assert raw == serialize(array.tolist())
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="s", datatype="BYTES", shape=shape)
    response.raw_output_contents.append(raw)
    want = parse_request(*body_of([tensor], outputs=[httpclient.InferRequestedOutput("s", binary)]), "m", "")
    body, json_length = encode_response(response, want)
    result = httpclient.InferResult.from_response_body(body, header_length=json_length)
    got = result.as_numpy("s").reshape(-1).tolist()
    assert [g if isinstance(g, bytes) else g.encode() for g in got] == array.tolist()


def test_output_parameters_pass_through_and_binary_data_is_consumed() -> None:
    tensor = httpclient.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32))
    outputs = [
        httpclient.InferRequestedOutput("a", binary_data=False, class_count=3),
        httpclient.InferRequestedOutput("b"),
    ]
    parsed = parse_request(*body_of([tensor], outputs=outputs), "m", "")
    requested = parsed.incoming.message.outputs
    assert [o.name for o in requested] == ["a", "b"]
    assert requested[0].parameters["classification"].int64_param == 3
    assert "binary_data" not in requested[0].parameters and "binary_data" not in requested[1].parameters
    assert not parsed.wants_binary("a") and parsed.wants_binary("b")


def test_shared_memory_parameters_reach_the_codec_unchanged_with_no_raw_tensor() -> None:
    shm = httpclient.InferInput("x", [1, 4], "FP32")
    shm.set_shared_memory("region", 16, offset=8)
    plain = httpclient.InferInput("y", [1], "FP32")
    plain.set_data_from_numpy(np.ones(1, np.float32))
    output = httpclient.InferRequestedOutput("z")
    output.set_shared_memory("out", 40)
    parsed = parse_request(*body_of([shm, plain], outputs=[output]), "m", "")
    params = parsed.incoming.message.inputs[0].parameters
    assert params["shared_memory_region"].string_param == "region"
    assert (params["shared_memory_byte_size"].int64_param, params["shared_memory_offset"].int64_param) == (
        16,
        8,
    )
    assert [bytes(r) for r in parsed.incoming.raw] == [np.ones(1, np.float32).tobytes()]
    assert parsed.incoming.message.outputs[0].parameters["shared_memory_region"].string_param == "out"


@pytest.mark.parametrize("binary", [True, False])
def test_responses_decode_with_tritonclients_own_parser(binary: bool) -> None:
    logits = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    strings = [b"0.857143:2:cat", b"0.428571:5:dog"]
    response = pb.ModelInferResponse(
        model_name="m",
        model_version="1",
        id="r1",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=[2, 3]),
            pb.ModelInferResponse.InferOutputTensor(name="top", datatype="BYTES", shape=[2, 1]),
        ],
        raw_output_contents=[logits.tobytes(), serialize(strings)],
    )
    tensor = httpclient.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32))
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "top")]
    parsed = parse_request(*body_of([tensor], outputs=outputs), "m", "")
    body, json_length = encode_response(response, parsed)
    assert (json_length is not None) == binary
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=json_length)
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    top = result.as_numpy("top")
    assert [t.encode() if isinstance(t, str) else t for t in top.ravel()] == strings
    assert result.get_response()["id"] == "r1"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[]", "must be a JSON object"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}',
            "not a list of FP32",
        ),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}]}', "list of integers"),
        (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}]}', "must be strings"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 3}',
            "id must be",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
            b' "parameters": {"binary_data_output": 1}}',
            "true or false",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],'
            b' "parameters": {"p": [1]}}]}',
            "parameter 'p'",
        ),
    ],
)
def test_malformed_json_is_invalid_argument_naming_the_problem(body: bytes, expected: str) -> None:
    with pytest.raises(ServeError, match=expected) as info:
        parse_request(body, None, "m", "")
    assert info.value.code.name == "INVALID_ARGUMENT"


@pytest.mark.parametrize("empty_entry", [True, False], ids=["empty-raw-entry", "no-raw-entry"])
def test_an_output_in_shared_memory_has_no_data_and_the_next_output_keeps_its_own(empty_entry: bool) -> None:
    logits = np.arange(3, dtype=np.float32)
    in_region = pb.ModelInferResponse.InferOutputTensor(name="a", datatype="FP32", shape=[1, 3])
    in_region.parameters["shared_memory_region"].string_param = "out"
    in_region.parameters["shared_memory_byte_size"].int64_param = 12
    response = pb.ModelInferResponse(
        model_name="m",
        outputs=[in_region, pb.ModelInferResponse.InferOutputTensor(name="b", datatype="FP32", shape=[1, 3])],
        raw_output_contents=[b"", logits.tobytes()] if empty_entry else [logits.tobytes()],
    )
    tensor = httpclient.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32))
    parsed = parse_request(*body_of([tensor]), "m", "")
    body, json_length = encode_response(response, parsed)
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=json_length)
    assert result.get_output("a")["parameters"] == {
        "shared_memory_region": "out",
        "shared_memory_byte_size": 12,
    }
    np.testing.assert_array_equal(result.as_numpy("b"), logits[None])
