"""Triton's error wording (docs/kserve.md, "Error messages"): each rule checked with the real tritonclient,
over gRPC and HTTP where both carry it. Clients and Triton's own examples match these messages by prefix
(`ex.message().startswith("Request for unknown model")`); the status codes are resnet-serve's own."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from kserve_fixtures import KServeServer, kserve_server
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

__all__ = ["kserve_server"]  # the fixture, imported so pytest finds it

pytestmark = pytest.mark.slow


def _clients(server: KServeServer) -> list[Any]:
    return [tc.InferenceServerClient(server.url), th.InferenceServerClient(server.http_url)]


def _refusal(call: Callable[..., Any], *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def _input(module: Any) -> Any:
    tensor = module.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), dtype=np.float32))
    return tensor


def _module(client: Any) -> Any:
    return tc if isinstance(client, tc.InferenceServerClient) else th


def test_unknown_model(kserve_server: KServeServer) -> None:
    for client in _clients(kserve_server):
        for call in (
            lambda c: c.infer("nope", [_input(_module(c))]),
            lambda c: c.get_model_metadata("nope"),
            lambda c: c.get_model_config("nope"),
        ):
            message = _refusal(call, client).message()
            assert message.startswith("Request for unknown model: 'nope' is not found"), message


def test_a_kserve_request_that_names_no_model_is_for_an_unknown_model(kserve_server: KServeServer) -> None:
    # The default model is the image API's; the KServe protocol names its model, and Triton answers an empty
    # name as the unknown model it is (over HTTP the route cannot even be formed).
    client = tc.InferenceServerClient(kserve_server.url)
    assert client.is_model_ready("tiny")
    assert not client.is_model_ready("")
    for call in (
        lambda c: c.infer("", [_input(tc)]),
        lambda c: c.get_model_metadata(""),
        lambda c: c.get_model_config(""),
    ):
        error = _refusal(call, client)
        assert error.message().startswith("Request for unknown model: '' is not found"), error.message()
        assert error.status() == "StatusCode.NOT_FOUND"


def test_unknown_version(kserve_server: KServeServer) -> None:
    for client in _clients(kserve_server):
        message = _refusal(client.infer, "tiny", [_input(_module(client))], model_version="7").message()
        assert message.startswith("Request for unknown model: 'tiny' version 7 is not found"), message
        message = _refusal(client.get_model_metadata, "tiny", model_version="7").message()
        assert message.startswith("Request for unknown model: 'tiny' version 7 is not found"), message


def test_a_version_that_is_not_a_number(kserve_server: KServeServer) -> None:
    for client in _clients(kserve_server):
        message = _refusal(client.infer, "tiny", [_input(_module(client))], model_version="one").message()
        assert message.startswith("failed to get model version from specified version string 'one'"), message


def test_a_version_of_non_ascii_digits_is_not_a_number(kserve_server: KServeServer) -> None:
    # int() reads "１" (fullwidth) and "١" (Arabic-Indic) as 1; Triton's std::stol does not.
    for client in _clients(kserve_server):
        for version in ("１", "١"):
            # tritonclient.http puts the version in the URL as given: percent-encoded, as a browser would
            sent = version if _module(client) is tc else quote(version)
            for call in (
                lambda c, v: c.infer("tiny", [_input(_module(c))], model_version=v),
                lambda c, v: c.get_model_metadata("tiny", model_version=v),
            ):
                message = _refusal(call, client, sent).message()
                assert message.startswith(
                    f"failed to get model version from specified version string '{version}'"
                ), message


def test_model_ready_with_a_version_that_is_not_a_number_is_refused_as_metadata_is(
    kserve_server: KServeServer,
) -> None:
    # It answered ready=false (HTTP 503) where the other RPCs answer the error, and "１" answered true;
    # Triton's ModelReady returns GetModelVersionFromString's error over gRPC and HTTP.
    client = tc.InferenceServerClient(kserve_server.url)
    for version in ("one", "1_0", "+1", "１", "١"):
        expected = _refusal(client.get_model_metadata, "tiny", model_version=version)
        refused = _refusal(client.is_model_ready, "tiny", model_version=version)
        assert (refused.status(), refused.message()) == (expected.status(), expected.message())
        assert refused.status() == "StatusCode.INVALID_ARGUMENT"  # the client's error, as in Triton
    assert not client.is_model_ready("tiny", model_version="7")  # unknown: not ready, no error (as Triton)
    assert not client.is_model_ready("nope")


def test_a_version_of_thousands_of_digits_is_not_a_number_and_the_answer_stays_short(
    kserve_server: KServeServer,
) -> None:
    # Python refuses to read a 5000-digit integer: the lookup must not try (it would be an INTERNAL error).
    client = tc.InferenceServerClient(kserve_server.url)
    error = _refusal(client.infer, "tiny", [_input(tc)], model_version="9" * 5000)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message().startswith("failed to get model version from specified version string '999")
    assert len(error.message()) < 1000


def test_a_version_with_a_leading_zero_is_that_number(kserve_server: KServeServer) -> None:
    client = tc.InferenceServerClient(kserve_server.url)
    assert client.infer("tiny", [_input(tc)], model_version="01").get_response().model_version == "1"


def test_raw_and_typed_contents_together_over_grpc(kserve_server: KServeServer) -> None:
    # tritonclient's InferInput never sets both, so the request is built with tritonclient's own generated
    # messages and stub (as Triton's grpc_explicit_*_client.py examples do).
    request = service_pb2.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
    tensor.contents.fp32_contents.extend([0.0] * 64)
    request.raw_input_contents.append(np.zeros(64, dtype=np.float32).tobytes())
    with grpc.insecure_channel(kserve_server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "contents field must not be specified when using raw_input_contents for 'input' for model 'tiny'"
    )


def test_an_input_the_model_does_not_have(kserve_server: KServeServer) -> None:
    for client in _clients(kserve_server):
        module = _module(client)
        extra = module.InferInput("INPUT9", [1], "FP32")
        extra.set_data_from_numpy(np.zeros(1, dtype=np.float32))
        message = _refusal(client.infer, "tiny", [_input(module), extra]).message()
        assert message.startswith("unexpected inference input 'INPUT9' for model 'tiny'"), message


def test_loading_a_model_that_is_not_in_the_repository(kserve_server: KServeServer) -> None:
    for client in _clients(kserve_server):
        error = _refusal(client.load_model, "wrong_model_name")
        assert error.message().startswith(
            "failed to load 'wrong_model_name', failed to poll from model repository"
        ), error.message()


def test_a_model_with_no_ready_version(kserve_server: KServeServer) -> None:
    client = tc.InferenceServerClient(kserve_server.url)
    client.unload_model("spare")
    try:
        message = _refusal(client.infer, "spare", [_input(tc)]).message()
        assert message.startswith("Request for unknown model: 'spare' has no available versions"), message
        message = _refusal(client.infer, "spare", [_input(tc)], model_version="1").message()
        assert message.startswith("Request for unknown model: 'spare' version 1 is not at ready state"), (
            message
        )
    finally:
        client.load_model("spare")


def _post(server: KServeServer, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"triton_enable_empty_final_response": True}, "parameter keys starting with 'triton_' are reserved"),
        ({"priority": "high"}, "invalid value type for 'priority' parameter, expected int64_param or uint64"),
        ({"sequence_id": 1.5}, "invalid value type for 'sequence_id' parameter"),
        (
            {"sequence_start": "yes"},
            "invalid value type for 'sequence_start' parameter, expected bool_param.",
        ),
        ({"priority": -1}, "the 'priority' parameter must not be negative"),
    ],
)
def test_request_parameters_of_the_wrong_kind_are_refused_in_tritons_words(
    kserve_server: KServeServer, parameters: dict[str, Any], words: str
) -> None:
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": x.ravel().tolist()}
    body: dict[str, Any] = {"inputs": [tensor], "parameters": parameters}
    status, answer = _post(kserve_server, "/v2/models/tiny/infer", body)
    assert status == 400 and words in answer["error"], answer
    request = service_pb2.ModelInferRequest(model_name="tiny", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
    for key, value in parameters.items():
        field = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}[
            type(value)
        ]
        setattr(request.parameters[key], field, value)
    with grpc.insecure_channel(kserve_server.url) as channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in str(info.value.details())


def test_well_formed_sequence_parameters_are_ignored_for_a_model_without_sequence_batching(
    kserve_server: KServeServer,
) -> None:
    client = tc.InferenceServerClient(kserve_server.url)
    result = client.infer("tiny", [_input(tc)], sequence_id=7, sequence_start=True, priority=1)
    assert result.as_numpy("logits").shape == (1, 10)
