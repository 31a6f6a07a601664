"""Hostile and malformed input against the surfaces that came with string tensors, models without a batch
dimension, multipart uploads and load overrides: each is refused with a clear message and the client's
status (gRPC INVALID_ARGUMENT / HTTP 400), never INTERNAL/500 with a traceback in the server log. Driven
by the real tritonclient where it can express the request, raw HTTP where it cannot (lone surrogates,
broken multipart bodies)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from kserve_fixtures import KServeServer, start_server, stop_server
from triton_models import SIMPLE_STRING_CONFIG, _one_op_model, write_simple_string, write_string_identity
from tritonclient.utils import InferenceServerException

IMAGE_API = "/v1/models/tiny/classify"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServeServer]:
    tmp = tmp_path_factory.mktemp("hostile_new")
    write_string_identity(tmp / "repository")  # max_batch_size 0
    write_string_identity(tmp / "repository", "simple_identity", max_batch_size=8)
    write_reshaping(tmp / "repository", "reshape_alone", max_batch_size=0)
    # Strings of integers ("abc" fails the model's Cast); requests within 200 ms share a batch.
    batching = "dynamic_batching { max_queue_delay_microseconds: 200000 }"
    write_simple_string(tmp / "repository", SIMPLE_STRING_CONFIG + batching)
    write_reshaping(tmp / "repository", "reshape_rows", max_batch_size=8)
    server = start_server(tmp, "--model-control-mode", "explicit")
    try:
        yield server
    finally:
        stop_server(server)
    assert "failed unexpectedly" not in server.log(), server.log()[-3000:]


def write_reshaping(repository: Path, name: str, max_batch_size: int) -> None:
    """INT32: clients send dims [-1], the model sees `reshape { shape: [2, -1] }` (an even count only)."""
    from onnx import TensorProto, numpy_helper

    config = f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] reshape {{ shape: [ 2, -1 ] }} }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] reshape {{ shape: [ 2, -1 ] }} }} ]
"""
    dims = ["batch", "a", "b"] if max_batch_size else ["a", "b"]
    two = numpy_helper.from_array(np.array(2, dtype=np.int32), "two")
    _one_op_model(repository, name, "Mul", (TensorProto.INT32, dims), config, [two])


@pytest.fixture
def grpc_client(server: KServeServer) -> Iterator[tc.InferenceServerClient]:
    client = tc.InferenceServerClient(server.url)
    yield client
    client.close()


@pytest.fixture
def http_client(server: KServeServer) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(server.http_url)
    yield client
    client.close()


def post(
    server: KServeServer, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """(status, error message or body) of a raw HTTP POST."""
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, json.loads(text).get("error", text)


def words(values: list[bytes]) -> np.ndarray:
    return np.array(values, dtype=object)


# ------------------------------------------------------------------------------------------ BYTES tensors


@pytest.mark.slow
def test_class_count_on_a_bytes_output_is_invalid_argument_on_both_protocols(
    grpc_client: tc.InferenceServerClient, http_client: th.InferenceServerClient
) -> None:
    for client, module, model, shape in (
        (grpc_client, tc, "string_identity", [2]),
        (http_client, th, "string_identity", [2]),
        (grpc_client, tc, "simple_identity", [1, 2]),
    ):
        tensor = module.InferInput("INPUT0", shape, "BYTES")
        tensor.set_data_from_numpy(words([b"a", b"b"]).reshape(shape))
        top = module.InferRequestedOutput("OUTPUT0", class_count=1)
        with pytest.raises(InferenceServerException, match="classification") as info:
            client.infer(model, [tensor], outputs=[top])
        assert "BYTES" in info.value.message(), info.value.message()
        assert info.value.status() in ("StatusCode.INVALID_ARGUMENT", "400"), info.value.status()


@pytest.mark.slow
def test_a_lone_surrogate_in_json_is_400_wherever_it_appears(server: KServeServer) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud800"); Python keeps it in a str that protobuf and UTF-8
    cannot encode. Every JSON body the HTTP API reads refuses it, naming it."""
    infer = "/v2/models/string_identity/infer"
    tensor = '{"name":"INPUT0","datatype":"BYTES","shape":[1],"data":["a"]}'
    cases = {
        infer: [
            '{"inputs":[{"name":"INPUT0","datatype":"BYTES","shape":[1],"data":["\\ud800"]}]}',
            '{"inputs":[{"name":"\\udfff","datatype":"BYTES","shape":[1],"data":["a"]}]}',
            '{"id":"\\ud800","inputs":[' + tensor + "]}",
            '{"parameters":{"p":"\\ud800"},"inputs":[' + tensor + "]}",
            '{"inputs":[' + tensor + '],"outputs":[{"name":"\\ud800"}]}',
        ],
        "/v2/repository/models/spare/load": ['{"parameters":{"config":"{\\"backend\\":\\"\\udcff\\"}"}}'],
        "/v2/systemsharedmemory/region/r/register": ['{"key":"\\ud800","offset":0,"byte_size":8}'],
    }
    for path, bodies in cases.items():
        for body in bodies:
            status, message = post(server, path, body.encode())
            assert (status, "surrogate" in message) == (400, True), (path, body, status, message)
    # A proper pair is one character, and fine.
    pair = '{"inputs":[{"name":"INPUT0","datatype":"BYTES","shape":[1],"data":["\\ud83d\\ude00"]}]}'
    status, answer = post(server, infer, pair.encode())
    assert status == 200 and json.loads(answer)["outputs"][0]["data"] == ["\U0001f600"]


@pytest.mark.slow
def test_bytes_json_data_nested_unevenly_is_400_as_numbers_are(server: KServeServer) -> None:
    infer = "/v2/models/string_identity/infer"
    uneven: list[list[object]] = [[["a"], "b"], ["a", ["b"]], [[["a"]], ["b"]]]
    for data in uneven:
        body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [2], "data": data}]}
        status, message = post(server, infer, json.dumps(body).encode())
        assert (status, "nested" in message) == (400, True), (data, status, message)
    even: list[list[object]] = [["a", "b"], [["a", "b"]], [["a"], ["b"]]]
    for data in even:  # flat, or nested evenly (Triton takes both)
        body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [2], "data": data}]}
        status, answer = post(server, infer, json.dumps(body).encode())
        assert status == 200 and json.loads(answer)["outputs"][0]["data"] == ["a", "b"], answer


# ------------------------------------------------------------------------------ reshape, no batch dimension


@pytest.mark.slow
def test_a_shape_that_config_reshape_cannot_take_is_invalid_argument_before_queuing(
    grpc_client: tc.InferenceServerClient,
) -> None:
    for model, good, bad in (("reshape_alone", [4], [3]), ("reshape_rows", [1, 4], [1, 3])):
        tensor = tc.InferInput("INPUT0", good, "INT32")
        tensor.set_data_from_numpy(np.arange(4, dtype=np.int32).reshape(good))
        assert (
            grpc_client.infer(model, [tensor]).as_numpy("OUTPUT0").tolist()
            == (np.arange(4).reshape(good) * 2).tolist()
        )
        tensor = tc.InferInput("INPUT0", bad, "INT32")
        tensor.set_data_from_numpy(np.arange(3, dtype=np.int32).reshape(bad))
        with pytest.raises(InferenceServerException, match=r"reshape \[2, -1\]") as info:
            grpc_client.infer(model, [tensor])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value


@pytest.mark.slow
def test_concurrent_requests_to_a_model_without_a_batch_dimension_each_run_alone(
    server: KServeServer,
) -> None:
    import threading

    answers: dict[int, list[bytes]] = {}

    def send(n: int) -> None:
        client = tc.InferenceServerClient(server.url)
        tensor = tc.InferInput("INPUT0", [n], "BYTES")
        tensor.set_data_from_numpy(np.array([str(n).encode()] * n, dtype=object))
        answers[n] = client.infer("string_identity", [tensor]).as_numpy("OUTPUT0").tolist()
        client.close()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {n: [str(n).encode()] * n for n in range(1, 7)}


# ------------------------------------------------------------------------------------- multipart uploads


def multipart(boundary: str, *parts: bytes) -> bytes:
    body = b""
    for data in parts:
        disposition = 'Content-Disposition: form-data; name="data"; filename="x.png"'
        body += f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize(
    ("content_type", "body", "needle"),
    [
        ("multipart/form-data", multipart("XyZ", b"img"), "boundary"),
        ("multipart/form-data; boundary=", multipart("XyZ", b"img"), "boundary"),
        ("multipart/form-data; boundary=other", multipart("XyZ", b"img"), "boundary"),
        ("multipart/form-data; boundary=" + "b" * 71, multipart("b" * 71, b"img"), "boundary"),
        ("multipart/form-data; boundary=XyZ", b"no boundary line in this body at all", "boundary"),
        ("multipart/form-data; boundary=XyZ", multipart("XyZ", b"img")[:-12], "multipart"),
        ("multipart/form-data; boundary=XyZ", b"--XyZ\r\n" + b"h" * 70000, "multipart"),
    ],
)
@pytest.mark.slow
def test_a_malformed_multipart_upload_is_400(
    server: KServeServer, content_type: str, body: bytes, needle: str
) -> None:
    status, message = post(server, IMAGE_API, body, {"Content-Type": content_type})
    assert status == 400 and needle in message, (status, message)


# ------------------------------------------------------------------------------------------ load overrides


@pytest.mark.slow
def test_a_load_parameter_integer_beyond_64_bits_is_400(server: KServeServer) -> None:
    body = json.dumps({"parameters": {"colour": 2**70}}).encode()
    status, message = post(server, "/v2/repository/models/spare/load", body)
    assert status == 400 and "colour" in message, (status, message)


@pytest.mark.slow
def test_a_model_name_too_long_or_with_a_nul_is_refused_not_internal(
    grpc_client: tc.InferenceServerClient, http_client: th.InferenceServerClient
) -> None:
    for name in ("a" * 300, "a\x00b"):
        for files in (None, {"file:1/model.onnx": b"x"}):
            with pytest.raises(InferenceServerException) as info:
                grpc_client.load_model(name, config="{}" if files else None, files=files)
            assert info.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), info.value
    with pytest.raises(InferenceServerException) as error:
        http_client.load_model("a" * 300)
    assert error.value.status() in ("400", "404"), error.value


@pytest.mark.slow
def test_instance_count_over_the_limit_is_refused_before_any_session_is_made(
    grpc_client: tc.InferenceServerClient,
) -> None:
    from resnet_serve.server.models.triton_config import MAX_INSTANCES

    config = json.dumps({"instance_group": [{"count": MAX_INSTANCES}, {"count": 1}]})
    with pytest.raises(InferenceServerException, match=f"at most {MAX_INSTANCES}"):
        grpc_client.load_model("spare", config=config)
    grpc_client.load_model("spare")  # the repository's configuration again
    assert grpc_client.is_model_ready("spare")


@pytest.mark.slow
def test_default_model_filename_cannot_leave_the_version_directory(
    server: KServeServer, grpc_client: tc.InferenceServerClient, tmp_path: Path
) -> None:
    elsewhere = server.model_file("tiny", "1").resolve()  # any .onnx file on the server's disk
    up = "../" * 40 + str(elsewhere).lstrip("/")
    for name in (up, "sub/model.onnx", ".."):
        with pytest.raises(InferenceServerException, match="default_model_filename") as info:
            grpc_client.load_model("spare", config=json.dumps({"default_model_filename": name}))
        assert info.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.UNAVAILABLE")
    grpc_client.load_model("spare")
    assert grpc_client.is_model_ready("spare")


@pytest.mark.slow
def test_a_failed_override_load_leaves_the_model_reloadable_from_the_repository(
    grpc_client: tc.InferenceServerClient,
) -> None:
    """The override's temporary directory is removed when its load fails; the next plain load must read the
    repository again (it looked in the removed directory: 'model path does not exist: /tmp/...')."""
    with pytest.raises(InferenceServerException, match="max_batch_size must be >= 0"):
        grpc_client.load_model("spare", config=json.dumps({"max_batch_size": -1}))
    assert grpc_client.is_model_ready("spare")  # the versions already serving stay
    grpc_client.load_model("spare")
    assert grpc_client.is_model_ready("spare")
    with pytest.raises(InferenceServerException):
        grpc_client.load_model("fresh", config="{}", files={"file:1/model.onnx": b"not onnx"})
    with pytest.raises(InferenceServerException) as info:
        grpc_client.load_model("fresh")  # it never was in the repository
    assert info.value.status() == "StatusCode.NOT_FOUND" and "/tmp" not in info.value.message()


@pytest.mark.slow
def test_load_overrides_racing_inference_on_the_same_model_drop_no_request(
    grpc_client: tc.InferenceServerClient, server: KServeServer
) -> None:
    import threading
    import time

    x = np.zeros((1, 1, 8, 8), np.float32)
    answered: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def infer() -> None:
        client = tc.InferenceServerClient(server.url)
        try:
            while not stop.is_set() and len(answered) + len(errors) < 2000:
                tensor = tc.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                try:
                    assert client.infer("spare", [tensor]).as_numpy("logits").shape == (1, 10)
                    answered.append(1)
                except InferenceServerException as error:
                    errors.append(str(error))
        finally:
            client.close()

    threads = [threading.Thread(target=infer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        for i in range(4):
            if time.monotonic() > deadline:
                break
            config = json.dumps({"max_batch_size": 2 + i}) if i % 2 == 0 else None
            grpc_client.load_model("spare", config=config)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert answered and not errors, errors[:3]
    assert grpc_client.get_model_config("spare").config.max_batch_size != 4  # the plain load came last


# --------------------------------------------------- config.pbtxt limits (what a load override can also send)

LIMITED = """
name: "m"
backend: "onnxruntime"
max_batch_size: {mbs}
input [ {{ name: "x", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "y", data_type: TYPE_FP32, dims: [ 4 ] }} ]
{extra}
"""


@pytest.mark.parametrize(
    ("mbs", "extra", "message"),
    [
        (8, "instance_group [ { count: 100 }, { count: 100 } ]", "asks for 200 instances; at most 128"),
        (8, 'default_model_filename: "../../elsewhere.onnx"', "must be a file name"),
        (8, 'default_model_filename: ".."', "must be a file name"),
        (
            2**31 - 1,
            'model_warmup [ { name: "w" batch_size: 2147483647 inputs { key: "x" value: '
            "{ data_type: TYPE_FP32 dims: [ 1048576 ] zero_data: true } } } ]",
            "model_warmup[0] ('w') would make",
        ),
        (
            8,
            'model_warmup [ { name: "w" batch_size: 1 count: 1000000000 inputs { key: "x" value: '
            "{ data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]",
            "count 1000000000 is over",
        ),
    ],
)
def test_config_values_that_would_exhaust_the_server_are_refused_when_read(
    tmp_path: Path, mbs: int, extra: str, message: str
) -> None:
    from resnet_serve.formats.repository import RepositoryError
    from resnet_serve.server.models.triton_config import read_config

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(LIMITED.format(mbs=mbs, extra=extra))
    with pytest.raises(RepositoryError, match=re.escape(message)):
        read_config(tmp_path / "m")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("[]", "must be a JSON object"),
        ("[1, 2]", "must be a JSON object"),
        ("1", "must be a JSON object"),
        ("null", "must be a JSON object"),
        ('"max_batch_size"', "must be a JSON object"),
        ('{"max_batch_size": -1}', "the config override: max_batch_size must be >= 0, got -1"),
        ('{"instance_group": [{"count": 100000}]}', "asks for 100000 instances"),
        ('{"platform": "tensorflow_savedmodel"}', "platform 'tensorflow_savedmodel' is not served here"),
    ],
)
def test_a_config_override_of_the_wrong_json_type_or_bad_values_is_invalid_argument(
    grpc_client: tc.InferenceServerClient, config: str, words: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        grpc_client.load_model("spare", config=config)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    assert info.value.message().startswith("failed to load 'spare', ") and words in info.value.message()
    assert "/tmp/" not in info.value.message()  # the temporary directory is the server's business
    assert grpc_client.is_model_ready("spare")


@pytest.mark.slow
def test_a_request_whose_data_fails_the_model_does_not_fail_the_requests_batched_with_it(
    server: KServeServer,
) -> None:
    """simple_string casts its strings to integers: "abc" makes ONNX Runtime fail the whole batch it is in.
    The others in that batch run again alone and succeed; only the request that fails alone gets the error."""
    import asyncio

    import tritonclient.grpc.aio as tc_aio

    def inputs(word: bytes) -> list[tc.InferInput]:
        tensors = []
        for name in ("INPUT0", "INPUT1"):
            tensor = tc.InferInput(name, [1, 16], "BYTES")
            tensor.set_data_from_numpy(np.array([[word] * 16], dtype=object))
            tensors.append(tensor)
        return tensors

    async def burst() -> list[Any]:
        client = tc_aio.InferenceServerClient(server.url)
        try:
            calls = [client.infer("simple_string", inputs(b"abc" if i == 2 else b"7")) for i in range(6)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    for _ in range(3):  # the six share a batch within the 200 ms queue delay (retried on a slow machine)
        results = asyncio.run(burst())
        good = [r for i, r in enumerate(results) if i != 2]
        assert not [r for r in good if isinstance(r, BaseException)], good
        assert all(np.array_equal(r.as_numpy("OUTPUT0"), [[b"14"] * 16]) for r in good)
        assert isinstance(results[2], InferenceServerException), results[2]
        if "running each alone" in server.log():
            break
    assert "running each alone" in server.log()


@pytest.mark.slow
def test_load_overrides_stay_refused_while_model_control_is_off(tmp_path: Path) -> None:
    server = start_server(tmp_path)  # model control: none (the default, as in Triton)
    grpc_client = tc.InferenceServerClient(server.url)
    http_client = th.InferenceServerClient(server.http_url)
    try:
        for client in (grpc_client, http_client):
            for kwargs in (
                {"config": '{"max_batch_size": 2}'},
                {"config": "{}", "files": {"file:1/model.onnx": b"x"}},
            ):
                with pytest.raises(InferenceServerException) as info:
                    client.load_model("spare", **kwargs)  # type: ignore[arg-type]
                assert info.value.status() in ("StatusCode.UNAVAILABLE", "503"), info.value
        assert grpc_client.get_model_config("spare").config.max_batch_size != 2
    finally:
        grpc_client.close()
        http_client.close()
        stop_server(server)
