"""Models in the style of Triton's own examples (tests/triton_models.py), served from one repository and
driven by the real tritonclient over gRPC and HTTP: STRING tensors (raw, typed contents, JSON, binary,
system shared memory), `max_batch_size: 0`, `reshape`, `input.format`, and the warmup of models with
variable dimensions and with `model_warmup`."""

from __future__ import annotations

import functools
import io
import queue
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from kserve_fixtures import KServeServer, start_server, stop_server
from test_kserve_shm import region
from triton_models import (
    DENSENET_LABELS,
    DENSENET_PREPROCESS,
    DENSENET_SIZE,
    densenet_config,
    densenet_reference,
    write_densenet_like,
    write_integer_identity,
    write_simple_string,
    write_string_identity,
    write_variable_int32,
)
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

pytestmark = pytest.mark.slow
__all__ = ["region"]  # the client-side regions fixture of the shared-memory tests

WARMUP = """
model_warmup [
  {
    name: "from_file"
    batch_size: 2
    count: 3
    inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 4 ] input_data_file: "four_ints" } }
  }
]
"""


INTEGERS = ("UINT16", "UINT32", "UINT64", "INT16")  # Triton's ONNX Runtime backend serves them all


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServeServer]:
    tmp = tmp_path_factory.mktemp("triton_models")
    repository = tmp / "repository"
    write_simple_string(repository)
    write_string_identity(repository, "simple_identity", max_batch_size=8)
    write_string_identity(repository)  # max_batch_size 0
    write_densenet_like(repository)
    write_densenet_like(repository, "densenet_images", densenet_config("densenet_images"), images=True)
    write_variable_int32(repository)  # dims [-1]: the default warmup must choose a size
    for datatype in INTEGERS:
        write_integer_identity(repository, datatype)
    warm = write_variable_int32(repository, "warmed_int32", warmup=WARMUP)
    (warm / "warmup").mkdir()
    (warm / "warmup" / "four_ints").write_bytes(np.arange(4, dtype="<i4").tobytes())
    server = start_server(tmp)  # with its default warmup on: start-up must not fail
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def clients(server: KServeServer) -> Iterator[tuple[tc.InferenceServerClient, th.InferenceServerClient]]:
    both = (tc.InferenceServerClient(server.url), th.InferenceServerClient(server.http_url))
    yield both
    for client in both:
        client.unregister_system_shared_memory()  # every region a test left registered
        client.close()


@pytest.fixture
def grpc_client(
    clients: tuple[tc.InferenceServerClient, th.InferenceServerClient],
) -> tc.InferenceServerClient:
    return clients[0]


@pytest.fixture
def http_client(
    clients: tuple[tc.InferenceServerClient, th.InferenceServerClient],
) -> th.InferenceServerClient:
    return clients[1]


def strings(values: np.ndarray) -> np.ndarray:
    return np.array([str(v).encode() for v in values.reshape(-1)], dtype=object).reshape(values.shape)


IN0 = np.arange(16, dtype=np.int32).reshape(1, 16)
IN1 = np.full((1, 16), 3, dtype=np.int32)


def string_inputs(module: Any, **binary: bool) -> list[Any]:
    inputs = []
    for name, values in (("INPUT0", IN0), ("INPUT1", IN1)):
        tensor = module.InferInput(name, [1, 16], "BYTES")
        tensor.set_data_from_numpy(strings(values), **binary)
        inputs.append(tensor)
    return inputs


def check_sum_and_difference(result: Any) -> None:
    for name, expected in (("OUTPUT0", IN0 + IN1), ("OUTPUT1", IN0 - IN1)):
        got = result.as_numpy(name)  # JSON strings come back as str (tritonclient.http, as from Triton)
        got = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(got)
        np.testing.assert_array_equal(got, strings(expected))


def test_string_tensors_round_trip_over_grpc_raw_and_typed_contents(
    grpc_client: tc.InferenceServerClient,
) -> None:
    check_sum_and_difference(grpc_client.infer("simple_string", string_inputs(tc)))
    # bytes_contents, as grpc_explicit_byte_content_client sends them
    request = tc.service_pb2.ModelInferRequest(model_name="simple_string")
    for name, values in (("INPUT0", IN0), ("INPUT1", IN1)):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1, 16])
        tensor.contents.bytes_contents.extend(strings(values).reshape(-1).tolist())
    response = grpc_client._client_stub.ModelInfer(request)
    sums = tc.InferResult(response).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(sums, strings(IN0 + IN1))


def test_concurrent_string_requests_batch_together_and_each_gets_its_own_rows(
    server: KServeServer, grpc_client: tc.InferenceServerClient
) -> None:
    def rows_so_far() -> int:
        stats = grpc_client.get_inference_statistics("simple_identity", as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0))

    before = rows_so_far()
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for i in range(8):
        tensor = tc.InferInput("INPUT0", [1 + i % 3, 16], "BYTES")
        tensor.set_data_from_numpy(np.full((1 + i % 3, 16), str(i).encode(), dtype=object))
        grpc_client.async_infer(
            "simple_identity",
            [tensor],
            functools.partial(lambda n, result, error: answers.put((n, result, error)), i),
        )
    for _ in range(8):
        i, result, error = answers.get(timeout=30)
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1 + i % 3, 16), str(i).encode()))
    assert rows_so_far() - before == sum(1 + i % 3 for i in range(8))  # rows, whatever the batches


def test_string_tensors_round_trip_over_http_json_and_binary(http_client: th.InferenceServerClient) -> None:
    json_out = [th.InferRequestedOutput(name, binary_data=False) for name in ("OUTPUT0", "OUTPUT1")]
    check_sum_and_difference(
        http_client.infer("simple_string", string_inputs(th, binary_data=False), outputs=json_out)
    )
    check_sum_and_difference(http_client.infer("simple_string", string_inputs(th, binary_data=True)))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_string_identity_keeps_embedded_nuls_and_binary_blobs(
    protocol: str, grpc_client: tc.InferenceServerClient, http_client: th.InferenceServerClient
) -> None:
    client, module = (grpc_client, tc) if protocol == "grpc" else (http_client, th)
    for data in ([b"he\x00llo"] * 16, [b"\x00\x01\x02\x03"] * 16, [b"", "é".encode()] * 8):
        array = np.array(data, dtype=object).reshape(1, 16)
        tensor = module.InferInput("INPUT0", [1, 16], "BYTES")
        tensor.set_data_from_numpy(array)
        np.testing.assert_array_equal(client.infer("simple_identity", [tensor]).as_numpy("OUTPUT0"), array)


def test_string_tensors_through_system_shared_memory_on_both_protocols(
    grpc_client: tc.InferenceServerClient,
    http_client: th.InferenceServerClient,
    region: Callable[[int], tuple[Any, str]],
) -> None:
    expected = [serialize_byte_tensor(strings(v)) for v in (IN0 + IN1, IN0 - IN1)]
    for client, module in ((grpc_client, tc), (http_client, th)):
        inputs, outputs, handles = [], [], []
        for i, values in enumerate((IN0, IN1)):
            data = serialize_byte_tensor(strings(values))
            handle, key = region(serialized_byte_size(data))
            shm.set_shared_memory_region(handle, [data])
            client.register_system_shared_memory(f"in{i}", key, serialized_byte_size(data))
            inputs.append(module.InferInput(f"INPUT{i}", [1, 16], "BYTES"))
            inputs[-1].set_shared_memory(f"in{i}", serialized_byte_size(data))
        for i, data in enumerate(expected):
            handle, key = region(serialized_byte_size(data))
            handles.append(handle)
            client.register_system_shared_memory(f"out{i}", key, serialized_byte_size(data))
            outputs.append(module.InferRequestedOutput(f"OUTPUT{i}"))
            outputs[-1].set_shared_memory(f"out{i}", serialized_byte_size(data))
        result = client.infer("simple_string", inputs, outputs=outputs)
        for i, values in enumerate((IN0 + IN1, IN0 - IN1)):
            output = result.get_output(f"OUTPUT{i}")
            shape = output.shape if protocol_of(module) == "grpc" else output["shape"]
            got = shm.get_contents_as_numpy(handles[i], np.object_, shape)
            np.testing.assert_array_equal(got, strings(values))
        client.unregister_system_shared_memory()


def protocol_of(module: Any) -> str:
    return "grpc" if module is tc else "http"


def test_a_bad_string_tensor_is_a_clear_invalid_argument(grpc_client: tc.InferenceServerClient) -> None:
    raw = serialize_byte_tensor(strings(IN0)).item()
    cases = {
        raw[:-1]: "BYTES element 15 says 2 bytes but only 1 remain",  # a length past the end
        b"\xff\xff\xff\x7f" + raw[4:]: "BYTES element 0 says 2147483647 bytes",  # never allocated
        raw[:12]: "12 bytes cannot hold 16 BYTES elements",
    }
    for data, message in cases.items():
        request = tc.service_pb2.ModelInferRequest(model_name="simple_identity")
        request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 16])
        request.raw_input_contents.append(data)
        with pytest.raises(Exception, match=re.escape(message)) as info:
            grpc_client._client_stub.ModelInfer(request)
        assert "INVALID_ARGUMENT" in str(info.value)
    tensor = tc.InferInput("INPUT0", [1, 2], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"ok", b"\xff"]], dtype=object))
    with pytest.raises(InferenceServerException, match="BYTES element 1 is not UTF-8 text") as error:
        grpc_client.infer("simple_identity", [tensor])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_model_without_a_batch_dimension_keeps_its_own_shapes(
    grpc_client: tc.InferenceServerClient, http_client: th.InferenceServerClient
) -> None:
    metadata = grpc_client.get_model_metadata("string_identity", as_json=True)
    assert metadata["inputs"][0]["shape"] == ["-1"] and metadata["outputs"][0]["shape"] == ["-1"]
    config = grpc_client.get_model_config("string_identity", as_json=True)["config"]
    assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == ["-1"]
    # Five elements are five elements of one request, not five rows capped at one.
    for client, module in ((grpc_client, tc), (http_client, th)):
        tensor = module.InferInput("INPUT0", [5], "BYTES")
        words = np.array([b"a", b"bb", b"", b"ccc", b"d"], dtype=object)
        tensor.set_data_from_numpy(words)
        result = client.infer("string_identity", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), words)
    wrong = tc.InferInput("INPUT0", [1, 5], "BYTES")
    wrong.set_data_from_numpy(np.array([[b"x"] * 5], dtype=object))
    with pytest.raises(InferenceServerException, match=r"must have shape \[-1\] \(-1: any size\)"):
        grpc_client.infer("string_identity", [wrong])


def test_reshape_and_format_are_applied_and_reported_as_config_pbtxt_states_them(
    grpc_client: tc.InferenceServerClient, http_client: th.InferenceServerClient
) -> None:
    s = DENSENET_SIZE
    metadata = grpc_client.get_model_metadata("densenet_like", as_json=True)
    assert metadata["inputs"][0]["shape"] == [str(d) for d in (3, s, s)]
    assert metadata["outputs"][0]["shape"] == ["10"]
    config = http_client.get_model_config("densenet_like")
    assert config["max_batch_size"] == 0
    (data,) = config["input"]
    assert (data["format"], data["dims"], data["reshape"]["shape"]) == (
        "FORMAT_NCHW",
        [3, s, s],
        [1, 3, s, s],
    )
    assert config["output"][0]["reshape"]["shape"] == [1, 10, 1, 1]
    image = np.random.default_rng(0).random((3, s, s), dtype=np.float32)
    for client, module in ((grpc_client, tc), (http_client, th)):
        tensor = module.InferInput("data_0", [3, s, s], "FP32")
        tensor.set_data_from_numpy(image)
        result = client.infer("densenet_like", [tensor])
        np.testing.assert_allclose(result.as_numpy("fc6_1"), densenet_reference(image), rtol=1e-5, atol=1e-5)
        # image_client.py's classification request on a model without a batch dimension: [k] strings
        top = module.InferRequestedOutput("fc6_1", class_count=3)
        classes = client.infer("densenet_like", [tensor], outputs=[top]).as_numpy("fc6_1")
        assert classes.shape == (3,)
        best = int(np.argmax(densenet_reference(image)))
        assert classes[0].decode().split(":")[1:] == [str(best), DENSENET_LABELS[best]]


def test_an_image_model_without_a_batch_dimension_takes_one_encoded_image_on_both_apis(
    server: KServeServer, grpc_client: tc.InferenceServerClient
) -> None:
    from PIL import Image

    from resnet_serve.formats.preprocess import ImageLimits, Preprocessor, PreprocessSpec
    from resnet_serve.protos import classifier_pb2 as cpb
    from resnet_serve.protos import classifier_pb2_grpc as cpb_grpc

    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    png = buffer.getvalue()
    x = Preprocessor(PreprocessSpec.from_dict(DENSENET_PREPROCESS), ImageLimits())(png)
    expected = densenet_reference(x)
    tensor = tc.InferInput("data_0", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([png], dtype=object))
    got = grpc_client.infer("densenet_images", [tensor]).as_numpy("fc6_1")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    two = tc.InferInput("data_0", [2], "BYTES")
    two.set_data_from_numpy(np.array([png, png], dtype=object))
    with pytest.raises(InferenceServerException, match="takes one image"):
        grpc_client.infer("densenet_images", [two])
    with grpc.insecure_channel(server.url) as channel:
        stub = cpb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
        answer = stub.Classify(cpb.ClassifyRequest(model="densenet_images", image=png, top_k=2), timeout=30)
        batch = stub.ClassifyBatch(
            cpb.ClassifyBatchRequest(model="densenet_images", images=[png] * 3), timeout=30
        )
    best = int(np.argmax(expected))
    assert answer.predictions[0].label == DENSENET_LABELS[best]
    assert [r.response.predictions[0].label for r in batch.results] == [DENSENET_LABELS[best]] * 3


def test_our_image_models_report_nchw_for_their_image_input(grpc_client: tc.InferenceServerClient) -> None:
    config = grpc_client.get_model_config("tiny", as_json=True)["config"]
    assert config["input"][0]["format"] == "FORMAT_NCHW"
    assert grpc_client.get_model_config("simple_string", as_json=True)["config"]["input"][0].get(
        "format", "FORMAT_NONE"
    ) == ("FORMAT_NONE")


def test_the_server_started_with_its_default_warmup_on_a_variable_dimension(
    server: KServeServer, grpc_client: tc.InferenceServerClient
) -> None:
    assert re.search(r"model variable_int32: warmed up with 'batch 1' x1, 'batch 8' x1", server.log())
    values = np.arange(10, dtype=np.int32).reshape(2, 5)
    tensor = tc.InferInput("INPUT0", [2, 5], "INT32")
    tensor.set_data_from_numpy(values)
    np.testing.assert_array_equal(
        grpc_client.infer("variable_int32", [tensor]).as_numpy("OUTPUT0"), values * 2
    )
    # simple_string's made-up warmup (empty strings) fails its Cast: one warning, and the model is served
    assert re.search(
        r"WARNING .*model 'simple_string': warmup 'batch 1' failed.*serving it without", server.log()
    )
    assert grpc_client.is_model_ready("simple_string")


def test_model_warmup_in_config_pbtxt_is_what_runs_and_model_config_reports_it(
    server: KServeServer, grpc_client: tc.InferenceServerClient
) -> None:
    assert "model warmed_int32: warmed up with 'from_file' x3 on 1 instance(s)" in server.log()
    (sample,) = grpc_client.get_model_config("warmed_int32", as_json=True)["config"]["model_warmup"]
    assert (sample["name"], sample["batch_size"], sample["count"]) == ("from_file", 2, 3)
    given = sample["inputs"]["INPUT0"]
    assert (given["data_type"], given["dims"], given["input_data_file"]) == ("TYPE_INT32", ["4"], "four_ints")


@pytest.mark.parametrize("datatype", INTEGERS)
def test_every_integer_width_round_trips_at_its_limits_on_both_protocols(
    clients: tuple[tc.InferenceServerClient, th.InferenceServerClient], datatype: str
) -> None:
    dtype = np.dtype(datatype.lower())
    info = np.iinfo(dtype)
    x = np.array([[info.min, info.max, 0, 1], [2, 3, info.max - 1, info.min + 1]], dtype=dtype)
    model = f"{datatype.lower()}_identity"
    for client in clients:
        module = tc if isinstance(client, tc.InferenceServerClient) else th
        for binary in (True, False) if module is th else (True,):
            tensor = module.InferInput("INPUT0", list(x.shape), datatype)
            if module is th:
                tensor.set_data_from_numpy(x, binary_data=binary)
                wanted = [th.InferRequestedOutput("OUTPUT0", binary_data=binary)]
            else:
                tensor.set_data_from_numpy(x)
                wanted = [tc.InferRequestedOutput("OUTPUT0")]
            result = client.infer(model, [tensor], outputs=wanted)
            out = result.as_numpy("OUTPUT0")
            assert out.dtype == dtype and np.array_equal(out, x), (client, binary, out)
        assert client.get_model_metadata(model) is not None
