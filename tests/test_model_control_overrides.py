"""RepositoryModelLoad with overrides, as Triton defines them (server/models/overrides.py): `config`, a JSON
ModelConfig that replaces the model's configuration for that load, and `file:<path>` contents, the model's
files for that load; over gRPC and HTTP with the real tritonclient. Refusals keep Triton's words ("failed to
load '<model>', ...") and are INVALID_ARGUMENT; nothing is written outside a temporary model directory."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from kserve_fixtures import KServeServer, kserve_server, reference_logits
from support.tiny_model import write_tiny_onnx
from tritonclient.utils import InferenceServerException

from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.errors import ServeError
from resnet_serve.server.models import overrides

__all__ = ["kserve_server"]  # the fixture (explicit model control), imported so pytest finds it

pytestmark = pytest.mark.slow


@pytest.fixture
def grpc_client(kserve_server: KServeServer) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(kserve_server.url)


@pytest.fixture
def http_client(kserve_server: KServeServer) -> th.InferenceServerClient:
    return th.InferenceServerClient(kserve_server.http_url)


def _refusal(call: object, *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


def _infer(client: tc.InferenceServerClient, model: str, rows: int = 1) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(rows, 1, 8, 8)).astype(np.float32)
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out: np.ndarray = client.infer(model, [tensor]).as_numpy("logits")
    return out


def test_a_config_override_replaces_the_configuration_until_a_plain_load(
    grpc_client: tc.InferenceServerClient,
) -> None:
    before = grpc_client.get_model_config("spare").config.max_batch_size
    # Triton's example sends the number as a JSON string; protobuf's JSON mapping accepts either.
    grpc_client.load_model("spare", config=json.dumps({"max_batch_size": "4"}))
    assert grpc_client.get_model_config("spare").config.max_batch_size == 4
    assert _infer(grpc_client, "spare", rows=4).shape == (4, 10)
    with pytest.raises(InferenceServerException, match="at most max_batch_size=4"):
        _infer(grpc_client, "spare", rows=5)
    grpc_client.load_model("spare")  # no override: the repository's configuration again
    assert grpc_client.get_model_config("spare").config.max_batch_size == before != 4


def test_a_config_override_over_http_is_applied(http_client: th.InferenceServerClient) -> None:
    http_client.load_model("spare", config=json.dumps({"max_batch_size": 2}))
    assert http_client.get_model_config("spare")["max_batch_size"] == 2
    http_client.load_model("spare")
    assert http_client.get_model_config("spare")["max_batch_size"] != 2


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ('"parameters": {"config": {{"max_batch_size": "16"}}}', "failed to parse the config override"),
        ('{"max_batch_size": "sixteen"}', "failed to parse the config override"),
        ('{"no_such_field": 1}', "failed to parse the config override"),
        ('{"name": "other"}', "the config override names the model 'other'"),
    ],
)
def test_a_bad_config_override_is_refused_in_tritons_words_and_the_model_keeps_serving(
    grpc_client: tc.InferenceServerClient, config: str, words: str
) -> None:
    error = _refusal(grpc_client.load_model, "spare", config=config)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message().startswith("failed to load 'spare', "), error.message()
    assert words in error.message()
    assert grpc_client.is_model_ready("spare")


def test_file_overrides_load_a_model_from_the_request_alone(
    grpc_client: tc.InferenceServerClient, http_client: th.InferenceServerClient, tmp_path: Path
) -> None:
    model_file = write_tiny_onnx(tmp_path / "model.onnx", seed=7)
    data = model_file.read_bytes()
    grpc_client.load_model("posted", config="{}", files={"file:1/model.onnx": data})
    x = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        _infer(grpc_client, "posted"), reference_logits(model_file, x), rtol=1e-4, atol=1e-5
    )
    written = list(Path(tempfile.gettempdir()).glob("resnet-serve-override-*/posted/1/model.onnx"))
    assert [p.read_bytes() for p in written] == [data]
    grpc_client.unload_model("posted")
    assert not grpc_client.is_model_ready("posted")
    assert not any(p.exists() for p in written), "the temporary model directory outlived the unload"
    # Without its files the model is nowhere: a plain load looks in the repository, as Triton's does.
    error = _refusal(grpc_client.load_model, "posted")
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message().startswith("failed to load 'posted', failed to poll from model repository")
    # Over HTTP the bytes travel base64-encoded (tritonclient.http encodes them).
    http_client.load_model("posted", config='{"max_batch_size": 3}', files={"file:1/model.onnx": data})
    assert http_client.get_model_config("posted")["max_batch_size"] == 3
    http_client.unload_model("posted")


@pytest.mark.parametrize(
    ("files", "config", "words"),
    [
        (
            {"file:1/model.onnx": b"x"},
            None,
            "load parameter 'config' must be specified for model file override",
        ),
        ({"file:../escape/model.onnx": b"x"}, "{}", "must stay within the model directory"),
        ({"file:1/../../escape.onnx": b"x"}, "{}", "must stay within the model directory"),
        ({"file:/tmp/absolute.onnx": b"x"}, "{}", "must be relative to the model directory"),
        ({"file:" + "A" * 256: b"x"}, "{}", "longer than 255 bytes"),
        ({"file:": b"x"}, "{}", "must name a file by a relative path"),
        ({"file:config.pbtxt": b"x"}, "{}", "the configuration comes from the 'config' parameter"),
        ({"file:1": b"x", "file:1/model.onnx": b"y"}, "{}", "cannot write the override files"),
    ],
)
def test_file_overrides_are_refused_before_anything_is_written(
    grpc_client: tc.InferenceServerClient, files: dict[str, bytes], config: str | None, words: str
) -> None:
    error = _refusal(grpc_client.load_model, "posted", config=config, files=files)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message().startswith("failed to load 'posted', "), error.message()
    assert words in error.message()
    assert grpc_client.is_server_live()
    assert not Path("/tmp/absolute.onnx").exists()


def test_a_file_override_that_is_not_a_model_fails_to_load_and_leaves_no_model(
    grpc_client: tc.InferenceServerClient,
) -> None:
    error = _refusal(grpc_client.load_model, "garbage", config="{}", files={"file:1/model.onnx": b"not onnx"})
    assert error.message().startswith("failed to load 'garbage', ")
    # The request's own bytes are at fault, and the message does not show where the server wrote them.
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "resnet-serve-override-" not in error.message(), error.message()
    assert not grpc_client.is_model_ready("garbage")


def test_a_config_override_the_model_does_not_fit_is_invalid_argument_and_the_model_keeps_serving(
    grpc_client: tc.InferenceServerClient, http_client: th.InferenceServerClient
) -> None:
    config = json.dumps({"input": [{"name": "zzz", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]})
    for load in (grpc_client.load_model, http_client.load_model):
        error = _refusal(load, "spare", config=config)
        assert error.message().startswith("failed to load 'spare', "), error.message()
        assert "'zzz' is not an input of the model" in error.message()
        assert "resnet-serve-override-" not in error.message(), error.message()
        assert error.status() in ("StatusCode.INVALID_ARGUMENT", "400")
    assert grpc_client.is_model_ready("spare")
    assert _infer(grpc_client, "spare").shape == (1, 10)


def test_a_model_name_for_file_overrides_must_be_plain(grpc_client: tc.InferenceServerClient) -> None:
    for name in ("..", "a/b", ".hidden"):
        error = _refusal(grpc_client.load_model, name, config="{}", files={"file:1/model.onnx": b"x"})
        assert error.status() == "StatusCode.INVALID_ARGUMENT", name


def _parameters(**values: object) -> object:
    request = pb.RepositoryModelLoadRequest(model_name="m")
    for key, value in values.items():
        key = key.replace("__", ":")
        if isinstance(value, bytes):
            request.parameters[key].bytes_param = value
        elif isinstance(value, str):
            request.parameters[key].string_param = value
        else:
            request.parameters[key].int64_param = int(value)  # type: ignore[call-overload]
    return request.parameters


def test_the_file_override_bytes_are_bounded_before_they_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overrides, "MAX_FILE_BYTES", 10)
    with pytest.raises(ServeError, match="hold more than 10 bytes"):
        overrides.parse_override("m", _parameters(config="{}", file__a=b"123456", file__b=b"123456"))
    monkeypatch.setattr(overrides, "MAX_FILES", 1)
    with pytest.raises(ServeError, match="more than 1 file overrides"):
        overrides.parse_override("m", _parameters(config="{}", file__a=b"1", file__b=b"2"))


def test_load_parameters_of_the_wrong_type_or_unknown_name_are_refused_in_tritons_words() -> None:
    cases = {
        "config parameter 'config' must have string type": _parameters(config=b"{}"),
        "file parameter 'file:a' must have bytes type": _parameters(config="{}", file__a="text"),
        "unrecognized load parameter 'colour' with type 'INT'": _parameters(colour=3),
    }
    for words, parameters in cases.items():
        with pytest.raises(ServeError) as info:
            overrides.parse_override("m", parameters)
        assert info.value.message.startswith("failed to load 'm', ") and words in info.value.message
    assert overrides.parse_override("m", _parameters()) is None


def test_a_load_or_unload_naming_a_repository_is_unimplemented_and_the_index_ignores_the_name(
    kserve_server: KServeServer,
) -> None:
    import urllib.error
    import urllib.request

    def post(path: str) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://{kserve_server.http_url}{path}", data=b"{}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, index = post("/v2/repository/elsewhere/index")
    assert status == 200 and {m["name"] for m in index} >= {"spare"}
    for action in ("load", "unload"):
        assert post(f"/v2/repository/elsewhere/models/spare/{action}") == (
            501,
            {"error": "'repository_name' specification is not supported"},
        )
    import grpc

    from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(kserve_server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="spare", repository_name="elsewhere"), timeout=10
            )
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert tc.InferenceServerClient(kserve_server.url).is_model_ready("spare")
