"""KServe v2 inference through the real tritonclient against a real server process."""

from __future__ import annotations

import io
import json
import queue
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from kserve_fixtures import (
    TINY_LABELS,
    TINY_PREPROCESS,
    KServeServer,
    assert_top_k_strings,
    reference_logits,
    start_server,
    stop_server,
)
from PIL import Image
from support.runtimes import RUNTIMES, runtime_flags
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module", params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def kserve_server(runtime: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServeServer]:
    """kserve_fixtures' server, once per runtime: every test here runs on each (support.runtimes.RUNTIMES)."""
    tmp = tmp_path_factory.mktemp("kserve")
    server = start_server(tmp, *runtime_flags(runtime, tmp / "openvino-cache"))
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def client(kserve_server: KServeServer) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(kserve_server.url)


def fp32_input(x: np.ndarray, name: str = "input") -> tc.InferInput:
    tensor = tc.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, *SHAPE)).astype(np.float32)


def normalise(pixels: np.ndarray) -> np.ndarray:
    mean = np.float32(TINY_PREPROCESS["mean"][0])  # type: ignore[index]
    std = np.float32(TINY_PREPROCESS["std"][0])  # type: ignore[index]
    out: np.ndarray = (pixels.astype(np.float32) / np.float32(255.0) - mean) / std
    return out


def status_of(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def test_fp32_infer_returns_the_model_output_and_echoes_the_request_id(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    x = batch(3)
    result = client.infer("tiny", [fp32_input(x)], model_version="1", request_id="req-42")
    response = result.get_response()
    assert response.id == "req-42"
    assert (response.model_name, response.model_version) == ("tiny", "1")
    got = result.as_numpy("logits")
    assert got.shape == (3, 10) and got.dtype == np.float32
    np.testing.assert_allclose(
        got, reference_logits(kserve_server.model_file("tiny", "1"), x), rtol=1e-5, atol=1e-5
    )


def test_no_version_means_the_highest_ready_version(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    x = batch(1, seed=1)
    result = client.infer("tiny", [fp32_input(x)])
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(
        result.as_numpy("logits"),
        reference_logits(kserve_server.model_file("tiny", "2"), x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_uint8_pixels_are_normalised_with_the_model_mean_and_std(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    tensor = tc.InferInput("input", [2, *SHAPE], "UINT8")
    tensor.set_data_from_numpy(pixels)
    got = client.infer("tiny", [tensor], model_version="1").as_numpy("logits")
    expected = reference_logits(kserve_server.model_file("tiny", "1"), normalise(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bytes_input_carries_encoded_images_decoded_by_the_server(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    encoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    tensor = tc.InferInput("input", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_))
    got = client.infer("tiny", [tensor], model_version="1").as_numpy("logits")
    # 8x8 PNGs need no resize or crop, so the expected input is the pixels, normalised.
    expected = reference_logits(kserve_server.model_file("tiny", "1"), normalise(pixels[:, None]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_large_request_takes_the_zero_copy_path_and_gives_the_same_answer(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    from resnet_serve.formats.preprocess import ImageLimits, Preprocessor, PreprocessSpec
    from resnet_serve.server.kserve.wire import ZERO_COPY_MIN_BYTES

    # A noisy 300x200 PNG is larger than the zero-copy threshold; the server resizes and crops it to 8x8.
    noise = np.random.default_rng(8).integers(0, 256, (200, 300), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise, mode="L").save(buffer, format="PNG")
    png = buffer.getvalue()
    assert len(png) > ZERO_COPY_MIN_BYTES
    tensor = tc.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([png], dtype=np.object_))
    got = client.infer("tiny", [tensor], model_version="1").as_numpy("logits")
    x = Preprocessor(PreprocessSpec.from_dict(TINY_PREPROCESS), ImageLimits())(png)[None]
    np.testing.assert_allclose(
        got, reference_logits(kserve_server.model_file("tiny", "1"), x), rtol=1e-5, atol=1e-5
    )


def test_classification_returns_triton_style_top_k_strings(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    x = batch(2, seed=4)
    result = client.infer(
        "tiny", [fp32_input(x)], model_version="1", outputs=[tc.InferRequestedOutput("logits", class_count=3)]
    )
    got = result.as_numpy("logits")
    assert got.shape == (2, 3)
    logits = reference_logits(kserve_server.model_file("tiny", "1"), x)
    for row, strings in zip(logits, got, strict=True):
        assert_top_k_strings(strings, row, k=3)


def test_typed_contents_are_accepted_like_raw_contents(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    # tritonclient always sends raw contents; build a typed-contents request with its own message classes.
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = batch(1, seed=5)
    request = service_pb2.ModelInferRequest(model_name="tiny", model_version="1", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, *SHAPE])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(kserve_server.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert response.id == "typed"
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(response.outputs[0].shape)
    np.testing.assert_allclose(
        got, reference_logits(kserve_server.model_file("tiny", "1"), x), rtol=1e-5, atol=1e-5
    )


def test_async_infer_delivers_every_result_to_its_callback(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    inputs = [batch(1, seed=10 + i) for i in range(4)]
    for i, x in enumerate(inputs):
        client.async_infer(
            "tiny",
            [fp32_input(x)],
            lambda result, error: results.put((result, error)),
            model_version="1",
            request_id=str(i),
        )
    got: dict[str, np.ndarray] = {}
    for _ in inputs:
        result, error = results.get(timeout=30)
        assert error is None
        got[result.get_response().id] = result.as_numpy("logits")
    reference = kserve_server.model_file("tiny", "1")
    for i, x in enumerate(inputs):
        np.testing.assert_allclose(got[str(i)], reference_logits(reference, x), rtol=1e-5, atol=1e-5)


def test_stream_answers_each_request_and_reports_errors_in_stream(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        inputs = {str(i): batch(1, seed=20 + i) for i in range(3)}
        for request_id, x in inputs.items():
            client.async_stream_infer("tiny", [fp32_input(x)], model_version="1", request_id=request_id)
        client.async_stream_infer("no-such-model", [fp32_input(batch(1))], request_id="bad")
        results: dict[str, np.ndarray] = {}
        errors: list[str] = []
        for _ in range(4):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(str(error.message()))
            else:
                results[result.get_response().id] = result.as_numpy("logits")
    finally:
        client.stop_stream()
    assert len(errors) == 1 and "no-such-model" in errors[0]
    reference = kserve_server.model_file("tiny", "1")
    assert sorted(results) == sorted(inputs)
    for request_id, x in inputs.items():
        np.testing.assert_allclose(results[request_id], reference_logits(reference, x), rtol=1e-5, atol=1e-5)


def test_fp16_model_takes_fp16_fp32_and_uint8_and_answers_fp16(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    metadata = client.get_model_metadata("half", as_json=True)
    assert metadata["inputs"][0]["datatype"] == "FP16" and metadata["outputs"][0]["datatype"] == "FP16"
    x = batch(2, seed=6)
    expected = reference_logits(kserve_server.model_file("half", "1"), x)
    half = tc.InferInput("input", [2, *SHAPE], "FP16")
    half.set_data_from_numpy(x.astype(np.float16))
    pixels = np.random.default_rng(7).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    uint8 = tc.InferInput("input", [2, *SHAPE], "UINT8")
    uint8.set_data_from_numpy(pixels)
    for tensor in (half, fp32_input(x)):
        got = client.infer("half", [tensor]).as_numpy("logits")
        assert got.dtype == np.float16
        assert_close_fp16(got, expected)
    got = client.infer("half", [uint8]).as_numpy("logits")
    expected_pixels = reference_logits(kserve_server.model_file("half", "1"), normalise(pixels))
    assert_close_fp16(got, expected_pixels)


def assert_close_fp16(got: np.ndarray, expected: np.ndarray) -> None:
    """The server's runtime (ONNX Runtime or OpenVINO, whichever this module runs on) against ONNX Runtime's
    reference: equal to within FP16's own resolution (2^-10 relative), not bit for bit: the two runtimes'
    kernels, and each runtime's kernels on different CPUs, round differently."""
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_model_config_names_the_runtime_and_the_precision_it_computes_in(
    client: tc.InferenceServerClient, runtime: str
) -> None:
    config = client.get_model_config("tiny", "1", as_json=True)["config"]
    parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert config["backend"] == runtime
    assert json.loads(parameters["labels"]) == TINY_LABELS
    if runtime == "openvino":
        # read back from the compiled model: a model served in bf16 would say bf16 here
        assert config["platform"] == "openvino"
        assert parameters["inference_precision"] == "fp32"
        assert parameters["execution_devices"] == "CPU"
        assert parameters["num_streams"] == "1"
    else:
        assert config["platform"] == "onnxruntime_onnx"
        assert "inference_precision" not in parameters


# --------------------------------------------------------------------------------------------- errors


def test_unknown_model_or_version_is_not_found(client: tc.InferenceServerClient) -> None:
    status, message = status_of(lambda: client.infer("no-such-model", [fp32_input(batch(1))]))
    assert status == "StatusCode.NOT_FOUND" and "no-such-model" in message
    status, message = status_of(lambda: client.infer("tiny", [fp32_input(batch(1))], model_version="9"))
    assert status == "StatusCode.NOT_FOUND" and "9" in message


@pytest.mark.parametrize(
    ("name", "shape", "datatype", "expected"),
    [
        ("pixels", [1, *SHAPE], "FP32", "'input'"),
        ("input", [1, 1, 8, 9], "FP32", "[-1, 1, 8, 8]"),
        ("input", [1, 8, 8], "FP32", "[-1, 1, 8, 8]"),
        ("input", [1, *SHAPE], "INT32", "expected FP32"),
    ],
)
def test_wrong_input_name_shape_or_datatype_is_invalid_argument_naming_the_expected_value(
    client: tc.InferenceServerClient, name: str, shape: list[int], datatype: str, expected: str
) -> None:
    tensor = tc.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np.int32 if datatype == "INT32" else np.float32))
    status, message = status_of(lambda: client.infer("tiny", [tensor]))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert expected in message


def test_wrong_byte_count_is_invalid_argument(kserve_server: KServeServer) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[1, *SHAPE])
    request.raw_input_contents.append(b"\0" * (4 * 64 - 1))
    with grpc.insecure_channel(kserve_server.url) as channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected 256 bytes" in str(info.value.details())


def test_undecodable_image_and_unknown_output_are_invalid_argument(client: tc.InferenceServerClient) -> None:
    tensor = tc.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    status, message = status_of(lambda: client.infer("tiny", [tensor]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "image" in message
    status, message = status_of(
        lambda: client.infer("tiny", [fp32_input(batch(1))], outputs=[tc.InferRequestedOutput("probs")])
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and "logits" in message


def test_shared_memory_tensors_are_refused_with_invalid_argument(client: tc.InferenceServerClient) -> None:
    tensor = tc.InferInput("input", [1, *SHAPE], "FP32")
    tensor.set_shared_memory("region", 256)
    status, message = status_of(lambda: client.infer("tiny", [tensor]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "shared memory" in message


def test_batch_larger_than_max_batch_size_is_invalid_argument(client: tc.InferenceServerClient) -> None:
    config = client.get_model_config("tiny").config
    status, message = status_of(lambda: client.infer("tiny", [fp32_input(batch(config.max_batch_size + 1))]))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert str(config.max_batch_size) in message


def test_too_many_encoded_images_are_refused_before_any_is_decoded(client: tc.InferenceServerClient) -> None:
    # Undecodable bytes: had the server decoded them first, the answer would be about the image instead.
    rows = client.get_model_config("tiny").config.max_batch_size + 1
    tensor = tc.InferInput("input", [rows], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"] * rows, dtype=np.object_))
    status, message = status_of(lambda: client.infer("tiny", [tensor]))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "max_batch_size" in message


def test_timeout_parameter_in_microseconds_expires_a_queued_request(client: tc.InferenceServerClient) -> None:
    # Triton's `timeout` parameter (tritonclient's `timeout=`, microseconds) bounds the time in the queue;
    # the server batches with a 2 ms queue delay, so a lone request with 1 us left expires there.
    status, message = status_of(lambda: client.infer("tiny", [fp32_input(batch(1))], timeout=1))
    assert status == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in message
    assert client.infer("tiny", [fp32_input(batch(1))], timeout=10_000_000).as_numpy("logits").shape == (
        1,
        10,
    )


@pytest.mark.parametrize("padding", [0, 64 * 1024], ids=["protobuf", "zero-copy"])
def test_malformed_request_is_invalid_argument_not_unknown(kserve_server: KServeServer, padding: int) -> None:
    from tritonclient.grpc import service_pb2

    # model_name "tiny", empty ids as padding, then raw_input_contents (field 7) cut short: 5 bytes announced,
    # 3 sent. gRPC answers a deserializer that raises with UNKNOWN (and a traceback in the server log).
    payload = b"\x0a\x04tiny" + b"\x1a\x00" * (padding // 2) + b"\x3a\x05abc"
    service = "/inference.GRPCInferenceService"
    with grpc.insecure_channel(kserve_server.url) as channel:
        unary = channel.unary_unary(f"{service}/ModelInfer", None, None)
        with pytest.raises(grpc.RpcError) as info:
            unary(payload, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed ModelInferRequest" in str(info.value.details())
        # On a stream it is answered in-stream, like any failed request, and the stream ends normally.
        stream = channel.stream_stream(f"{service}/ModelStreamInfer", None, None)
        answers = list(stream(iter([payload]), timeout=30))
    assert len(answers) == 1
    answer = service_pb2.ModelStreamInferResponse.FromString(answers[0])
    assert "malformed ModelInferRequest" in answer.error_message
