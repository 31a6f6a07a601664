"""KServe v2 over HTTP/REST through the real tritonclient.http (sync and aio) against a real server process,
checked against the model (ONNX Runtime in the test) and against the same server's gRPC answers."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from kserve_fixtures import (
    TINY_LABELS,
    TINY_PREPROCESS,
    KServeServer,
    assert_top_k_strings,
    kserve_server,
    reference_logits,
)
from PIL import Image
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow
__all__ = ["kserve_server"]  # the fixture, imported so pytest finds it

SHAPE = (1, 8, 8)


class AioClient:
    """tritonclient.http.aio's client driven from a synchronous test: each call runs on the facade's loop."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()

        async def make() -> aioclient.InferenceServerClient:
            return aioclient.InferenceServerClient(url)

        self._client = self._loop.run_until_complete(make())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._loop.run_until_complete(method(*args, **kwargs))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()


@pytest.fixture(scope="module", params=["sync", "aio"])
def client(request: pytest.FixtureRequest, kserve_server: KServeServer) -> Iterator[Any]:
    if request.param == "sync":
        sync = httpclient.InferenceServerClient(kserve_server.http_url)
        yield sync
        sync.close()
    else:
        aio = AioClient(kserve_server.http_url)
        yield aio
        aio.close()


@pytest.fixture(scope="module")
def grpc_client(kserve_server: KServeServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(kserve_server.url)


def fp32_input(x: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, *SHAPE)).astype(np.float32)


def normalise(pixels: np.ndarray) -> np.ndarray:
    mean = np.float32(TINY_PREPROCESS["mean"][0])  # type: ignore[index]
    std = np.float32(TINY_PREPROCESS["std"][0])  # type: ignore[index]
    out: np.ndarray = (pixels.astype(np.float32) / np.float32(255.0) - mean) / std
    return out


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def failure(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def fetch(
    server: KServeServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP call (for what tritonclient cannot send): status, headers, body."""
    request = urllib.request.Request(
        f"http://{server.http_url}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def binary_body(size: int, sent: int) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body whose input announces `size` bytes and carries `sent`."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, *SHAPE],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return header + b"\0" * sent, {"Inference-Header-Content-Length": str(len(header))}


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- health, metadata


def test_health_and_server_metadata_list_the_grpc_extensions_plus_binary_tensor_data(
    client: Any, grpc_client: grpcclient.InferenceServerClient
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "resnet-serve"
    grpc_extensions = list(grpc_client.get_server_metadata().extensions)
    assert metadata["extensions"] == [*grpc_extensions, "binary_tensor_data"]


def test_model_ready_per_version(client: Any) -> None:
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1") and client.is_model_ready("tiny", "2")
    assert not client.is_model_ready("tiny", "3")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata_is_the_grpc_answer_with_numbers_for_shapes(
    client: Any, grpc_client: grpcclient.InferenceServerClient
) -> None:
    metadata = client.get_model_metadata("tiny")
    assert metadata == {
        "name": "tiny",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get_model_metadata("tiny", "1")["name"] == "tiny"
    grpc_metadata = grpc_client.get_model_metadata("tiny", as_json=True)
    assert grpc_metadata["inputs"][0]["shape"] == [str(d) for d in metadata["inputs"][0]["shape"]]


def test_model_config_states_batching_tensors_and_metadata(client: Any) -> None:
    config = client.get_model_config("tiny", "1")
    assert (config["name"], config["platform"], config["backend"]) == (
        "tiny",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config["max_batch_size"] > 0
    assert config["input"][0]["dims"] == [1, 8, 8] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert json.loads(config["parameters"]["labels"]["string_value"]) == TINY_LABELS


# ------------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_infer_returns_the_model_output_and_echoes_the_request_id(
    client: Any, kserve_server: KServeServer, binary: bool
) -> None:
    x = batch(3)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer(
        "tiny", [fp32_input(x, binary)], model_version="1", request_id="req-42", outputs=outputs
    )
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("req-42", "tiny", "1")
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary
    got = result.as_numpy("logits")
    assert got.shape == (3, 10) and got.dtype == np.float32
    assert_close(got, reference_logits(kserve_server.model_file("tiny", "1"), x))


def test_no_version_means_the_highest_ready_version(client: Any, kserve_server: KServeServer) -> None:
    x = batch(1, seed=1)
    result = client.infer("tiny", [fp32_input(x)])
    assert result.get_response()["model_version"] == "2"
    assert_close(result.as_numpy("logits"), reference_logits(kserve_server.model_file("tiny", "2"), x))


def test_http_and_grpc_answer_the_same_request_identically(
    client: Any, grpc_client: grpcclient.InferenceServerClient
) -> None:
    x = batch(4, seed=9)
    over_http = client.infer("tiny", [fp32_input(x)], model_version="1").as_numpy("logits")
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    over_grpc = grpc_client.infer("tiny", [tensor], model_version="1").as_numpy("logits")
    np.testing.assert_array_equal(over_http, over_grpc)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_pixels_are_normalised_with_the_model_mean_and_std(
    client: Any, kserve_server: KServeServer, binary: bool
) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    tensor = httpclient.InferInput("input", [2, *SHAPE], "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    got = client.infer("tiny", [tensor], model_version="1").as_numpy("logits")
    assert_close(got, reference_logits(kserve_server.model_file("tiny", "1"), normalise(pixels)))


def test_bytes_input_carries_encoded_images_decoded_by_the_server(
    client: Any, kserve_server: KServeServer
) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    tensor = httpclient.InferInput("input", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([png(p) for p in pixels], dtype=np.object_))
    got = client.infer("tiny", [tensor], model_version="1").as_numpy("logits")
    assert_close(got, reference_logits(kserve_server.model_file("tiny", "1"), normalise(pixels[:, None])))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_returns_triton_style_top_k_strings(
    client: Any, kserve_server: KServeServer, binary: bool
) -> None:
    x = batch(2, seed=4)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
    got = client.infer("tiny", [fp32_input(x)], model_version="1", outputs=outputs).as_numpy("logits")
    assert got.shape == (2, 3)
    logits = reference_logits(kserve_server.model_file("tiny", "1"), x)
    for row, strings in zip(logits, got, strict=True):
        assert_top_k_strings(strings, row, k=3)


def test_fp16_model_answers_fp16(client: Any, kserve_server: KServeServer) -> None:
    x = batch(2, seed=6)
    tensor = httpclient.InferInput("input", [2, *SHAPE], "FP16")
    tensor.set_data_from_numpy(x.astype(np.float16))
    got = client.infer("half", [tensor]).as_numpy("logits")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, reference_logits(kserve_server.model_file("half", "1"), x))


def test_sync_clients_async_infer_delivers_every_result(kserve_server: KServeServer) -> None:
    client = httpclient.InferenceServerClient(kserve_server.http_url, concurrency=4)
    inputs = [batch(1, seed=30 + i) for i in range(4)]
    try:
        pending = [
            client.async_infer("tiny", [fp32_input(x)], model_version="1", request_id=str(i))
            for i, x in enumerate(inputs)
        ]
        results = [p.get_result(timeout=30) for p in pending]
    finally:
        client.close()
    reference = kserve_server.model_file("tiny", "1")
    for i, (x, result) in enumerate(zip(inputs, results, strict=True)):
        assert result.get_response()["id"] == str(i)
        assert_close(result.as_numpy("logits"), reference_logits(reference, x))


def test_request_id_header_wins_and_is_echoed(kserve_server: KServeServer) -> None:
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, *SHAPE], "data": [0.0] * 64}]}
    ).encode()
    status, headers, answer = fetch(
        kserve_server, "POST", "/v2/models/tiny/infer", body, {"x-request-id": "from-header"}
    )
    assert status == 200 and headers["x-request-id"] == "from-header"
    assert json.loads(answer)["outputs"][0]["shape"] == [1, 10]
    # Refused before the service saw it (not JSON): the client's id still comes back.
    status, headers, _ = fetch(
        kserve_server, "POST", "/v2/models/tiny/infer", b"{", {"x-request-id": "bad-1"}
    )
    assert status == 400 and headers["x-request-id"] == "bad-1"


def test_statistics_count_http_requests_like_grpc_ones(
    client: Any, grpc_client: grpcclient.InferenceServerClient
) -> None:
    def counts() -> tuple[int, int, int]:
        s = client.get_inference_statistics("tiny", "2")["model_stats"][0]
        return (
            s["inference_count"],
            s["inference_stats"]["success"]["count"],
            s["inference_stats"]["fail"]["count"],
        )

    before = counts()
    for rows in (1, 2):
        client.infer("tiny", [fp32_input(batch(rows))], model_version="2")
    failure(lambda: client.infer("tiny", [fp32_input(np.zeros((1, 1, 8, 7), np.float32))], model_version="2"))
    after = counts()
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (3, 2, 1)
    over_grpc = grpc_client.get_inference_statistics("tiny", "2", as_json=True)["model_stats"][0]
    assert int(over_grpc["inference_count"]) == after[0]
    everything = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in everything} >= {("tiny", "1"), ("tiny", "2"), ("half", "1")}
    # Every field Triton's answer has, zeros included (no response cache: cache_hit and cache_miss are 0)
    stats = client.get_inference_statistics("tiny", "2")["model_stats"][0]["inference_stats"]
    durations = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    assert set(stats) == {*durations, "cache_hit", "cache_miss"}
    assert stats["cache_hit"] == stats["cache_miss"] == {"count": 0, "ns": 0}


def test_repository_unload_and_load_change_what_is_served(client: Any) -> None:
    index = client.get_model_repository_index()
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {
        ("tiny", "1", "READY"),
        ("spare", "1", "READY"),
    }
    client.unload_model("spare")
    assert not client.is_model_ready("spare")
    assert client.is_server_ready()
    assert {m["name"]: m["state"] for m in client.get_model_repository_index()}["spare"] == "UNAVAILABLE"
    status, _ = failure(lambda: client.infer("spare", [fp32_input(batch(1))]))
    assert status == "503"
    client.load_model("spare")
    assert client.is_model_ready("spare")
    assert client.infer("spare", [fp32_input(batch(1))]).as_numpy("logits").shape == (1, 10)


# ----------------------------------------------------------------------------------------------- errors


def test_unknown_model_or_version_is_404(client: Any) -> None:
    status, message = failure(lambda: client.infer("no-such-model", [fp32_input(batch(1))]))
    assert status == "404" and "no-such-model" in message
    status, message = failure(lambda: client.infer("tiny", [fp32_input(batch(1))], model_version="9"))
    assert status == "404" and "9" in message
    assert failure(lambda: client.get_model_metadata("nope"))[0] == "404"
    assert failure(lambda: client.get_model_config("tiny", "9"))[0] == "404"
    assert failure(lambda: client.load_model("no-such-model"))[0] == "404"


@pytest.mark.parametrize(
    ("name", "shape", "datatype", "expected"),
    [
        ("pixels", [1, *SHAPE], "FP32", "'input'"),
        ("input", [1, 1, 8, 9], "FP32", "[-1, 1, 8, 8]"),
        ("input", [1, *SHAPE], "INT32", "expected FP32"),
    ],
)
def test_wrong_input_name_shape_or_datatype_is_400_naming_the_expected_value(
    client: Any, name: str, shape: list[int], datatype: str, expected: str
) -> None:
    tensor = httpclient.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np.int32 if datatype == "INT32" else np.float32))
    status, message = failure(lambda: client.infer("tiny", [tensor]))
    assert status == "400" and expected in message


def test_other_invalid_requests_are_400(client: Any) -> None:
    tensor = httpclient.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    status, message = failure(lambda: client.infer("tiny", [tensor]))
    assert status == "400" and "image" in message
    outputs = [httpclient.InferRequestedOutput("probs")]
    status, message = failure(lambda: client.infer("tiny", [fp32_input(batch(1))], outputs=outputs))
    assert status == "400" and "logits" in message
    rows = client.get_model_config("tiny")["max_batch_size"] + 1
    status, message = failure(lambda: client.infer("tiny", [fp32_input(batch(rows))]))
    assert status == "400" and str(rows - 1) in message
    status, message = failure(lambda: client.load_model("spare", config="{not json"))
    assert status == "400" and message.startswith("failed to load 'spare', failed to parse the config")


def test_loading_a_path_outside_the_repository_is_404(client: Any) -> None:
    for name in ("", "..", "../repository", "tiny/1"):
        with pytest.raises(InferenceServerException) as info:
            client.load_model(name)
        assert info.value.status() == "404", name


def test_timeout_parameter_expires_a_queued_request_with_504(client: Any) -> None:
    status, message = failure(lambda: client.infer("tiny", [fp32_input(batch(1))], timeout=1))
    assert status == "504" and "deadline" in message


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b'{"inputs": []}', {}, "non-empty 'inputs'"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8]}]}', {}, "has no data"),
        (*binary_body(256, 255), "runs past the end"),  # one byte short of what the input announces
        (*binary_body(255, 255), "expected 256 bytes"),  # the wrong size for the shape: the codec's message
        (*binary_body(256, 300), "bytes after the inputs"),
        (b"{}", {"Inference-Header-Content-Length": "99"}, "outside the body"),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [1, 2]}]}',
            {},
            "expected 64 values",
        ),
    ],
    ids=[
        "json",
        "no-inputs",
        "no-data",
        "short-binary",
        "wrong-size",
        "trailing-bytes",
        "header-length",
        "data-count",
    ],
)
def test_malformed_bodies_are_400_with_a_json_error(
    kserve_server: KServeServer, body: bytes, headers: dict[str, str], expected: str
) -> None:
    status, answer_headers, answer = fetch(kserve_server, "POST", "/v2/models/tiny/infer", body, headers)
    assert status == 400, answer
    assert answer_headers["Content-Type"].startswith("application/json")
    assert expected in json.loads(answer)["error"]


def test_unknown_routes_and_methods_answer_json_errors(kserve_server: KServeServer) -> None:
    status, _, answer = fetch(kserve_server, "GET", "/v2/nothing-here")
    assert status == 404 and "error" in json.loads(answer)
    status, _, answer = fetch(kserve_server, "GET", "/v2/models/tiny/infer")
    assert status == 405 and "error" in json.loads(answer)


def test_trace_and_log_settings_are_501_on_http_and_unimplemented_on_grpc_without_a_traceback(
    client: Any, kserve_server: KServeServer, grpc_client: grpcclient.InferenceServerClient
) -> None:
    status, message = failure(lambda: client.get_trace_settings())
    assert status == "501" and "TraceSetting" in message
    assert failure(lambda: client.get_log_settings())[0] == "501"
    for call in (grpc_client.get_trace_settings, grpc_client.get_log_settings):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "Traceback" not in kserve_server.log()
    assert "NotImplementedError" not in kserve_server.log()


# ------------------------------------------------------------------------------ image API, metrics port


def test_image_api_classifies_the_body_as_the_grpc_image_api_does(kserve_server: KServeServer) -> None:
    from resnet_serve.protos import classifier_pb2, classifier_pb2_grpc

    image = png(np.random.default_rng(11).integers(0, 256, (8, 8), dtype=np.uint8))
    status, headers, answer = fetch(
        kserve_server, "POST", "/v1/models/tiny/classify?version=1&top_k=3", image, {"x-request-id": "img-1"}
    )
    assert status == 200, answer
    got = json.loads(answer)
    assert (got["model"], got["version"], got["request_id"]) == ("tiny", "1", "img-1")
    assert headers["x-request-id"] == "img-1"
    with grpc.insecure_channel(kserve_server.url) as channel:
        stub = classifier_pb2_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
        expected = stub.Classify(
            classifier_pb2.ClassifyRequest(model="tiny", version="1", image=image, top_k=3)
        )
    assert [(p["index"], p["label"]) for p in got["predictions"]] == [
        (p.index, p.label) for p in expected.predictions
    ]
    np.testing.assert_allclose(
        [p["score"] for p in got["predictions"]], [p.score for p in expected.predictions]
    )
    status, _, answer = fetch(kserve_server, "POST", "/v1/models/tiny/classify", b"not an image")
    assert status == 400 and "image" in json.loads(answer)["error"]
    status, _, _ = fetch(kserve_server, "POST", "/v1/models/nope/classify", image)
    assert status == 404


def test_metrics_port_serves_metrics_only(kserve_server: KServeServer) -> None:
    with urllib.request.urlopen(kserve_server.metrics_url, timeout=10) as response:
        assert response.status == 200 and b"resnet_serve_requests_total" in response.read()
    base = kserve_server.metrics_url.removesuffix("/metrics")
    for path in ("/v2/health/ready", "/", "/metricsx"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + path, timeout=10)
        assert info.value.code == 404, path


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_accepted_and_answers_come_back_plain(
    client: Any, kserve_server: KServeServer, algorithm: str
) -> None:
    x = batch(2, seed=12)
    result = client.infer(
        "tiny",
        [fp32_input(x)],
        model_version="1",
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert_close(result.as_numpy("logits"), reference_logits(kserve_server.model_file("tiny", "1"), x))


def test_a_body_over_the_limit_is_refused_by_its_content_length_with_413(kserve_server: KServeServer) -> None:
    import http.client

    host, port = kserve_server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:  # announce 1 GiB, send nothing: the answer must not wait for the body
        connection.putrequest("POST", "/v2/models/tiny/infer")
        connection.putheader("Content-Length", str(1 << 30))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert "exceeded" in json.loads(response.read())["error"]
    finally:
        connection.close()
