"""KServe v2 health, metadata, config, statistics and repository RPCs, through the real tritonclient."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from kserve_fixtures import TINY_LABELS, TINY_PREPROCESS, KServeServer, kserve_server
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow
__all__ = ["kserve_server"]  # the fixture, imported so pytest finds it


@pytest.fixture(scope="module")
def client(kserve_server: KServeServer) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(kserve_server.url)


def infer(client: tc.InferenceServerClient, rows: int, version: str = "1") -> None:
    tensor = tc.InferInput("input", [rows, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((rows, 1, 8, 8), dtype=np.float32))
    client.infer("tiny", [tensor], model_version=version)


def test_server_is_live_and_ready_and_says_what_it_supports(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "resnet-serve"
    assert {"classification", "model_repository", "statistics"} <= set(metadata.extensions)


def test_model_ready_per_version(client: tc.InferenceServerClient) -> None:
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1") and client.is_model_ready("tiny", "2")
    assert not client.is_model_ready("tiny", "3")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata_reports_the_real_tensors_with_a_variable_batch(
    client: tc.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("tiny", as_json=True)
    assert metadata["name"] == "tiny"
    assert metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]


def test_model_config_states_batching_tensors_and_the_models_own_metadata(
    client: tc.InferenceServerClient,
) -> None:
    config = client.get_model_config("tiny", "1", as_json=True)["config"]
    assert config["name"] == "tiny"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] > 0
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": ["1", "8", "8"]}
    ]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["10"]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"
    assert config["version_policy"] == {"all": {}}
    parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert json.loads(parameters["labels"]) == TINY_LABELS
    assert json.loads(parameters["preprocess"]) == TINY_PREPROCESS
    assert parameters["accepted_input_datatypes"] == "FP32,UINT8,BYTES"


UNSET = ("optimization", "model_warmup", "response_cache", "ensemble_scheduling", "sequence_batching")


def test_triton_fields_the_server_cannot_state_are_in_the_answer_and_left_unset_as_the_docs_say(
    client: tc.InferenceServerClient,
) -> None:
    from pathlib import Path

    config = client.get_model_config("tiny", "1").config
    set_fields = {f.name for f, _ in config.ListFields()}
    for field in UNSET:
        assert field in config.DESCRIPTOR.fields_by_name, field  # Triton's schema: the answer has the field
        assert field not in set_fields, field
    assert all(out.label_filename == "" for out in config.output)
    section = (Path(__file__).parents[1] / "docs" / "kserve.md").read_text().split("## ModelConfig", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert "absent" not in section  # the fields exist; what the docs promise is that they are unset
    for field in (*UNSET, "label_filename"):
        assert f"`{field}`" in section, field


def test_metadata_of_unknown_model_is_not_found(client: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("tiny", "9")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_match_the_prometheus_metrics(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    for rows in (1, 2, 1):
        infer(client, rows)
    bad = tc.InferInput("input", [1, 1, 8, 7], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 8, 7), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("tiny", [bad], model_version="1")
    stats = client.get_inference_statistics("tiny", "1", as_json=True)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("tiny", "1")]
    s = stats[0]
    inference = s["inference_stats"]
    labels = {"model": "tiny", "version": "1"}
    assert int(s["inference_count"]) == 4
    assert int(inference["success"]["count"]) == 3
    assert int(inference["fail"]["count"]) == 1
    assert int(s["inference_count"]) == kserve_server.metric("resnet_serve_inferences_total", **labels)
    assert int(s["execution_count"]) == kserve_server.metric("resnet_serve_executions_total", **labels)
    success = kserve_server.metric("resnet_serve_requests_total", outcome="success", **labels)
    invalid = kserve_server.metric("resnet_serve_requests_total", outcome="invalid_input", **labels)
    assert (int(inference["success"]["count"]), int(inference["fail"]["count"])) == (success, invalid)
    executed = sum(int(b["compute_infer"]["count"]) for b in s["batch_stats"])
    assert executed == int(s["execution_count"])
    assert int(inference["compute_infer"]["ns"]) > 0 and int(s["last_inference"]) > 0


def test_statistics_without_a_name_cover_every_loaded_version(client: tc.InferenceServerClient) -> None:
    stats = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {(s["name"], s["version"]) for s in stats} == {
        ("tiny", "1"),
        ("tiny", "2"),
        ("spare", "1"),
        ("half", "1"),
    }


def test_repository_unload_and_load_change_what_is_served(
    client: tc.InferenceServerClient, kserve_server: KServeServer
) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m.get("version"), m["state"]) for m in index} == {
        ("half", "1", "READY"),
        ("spare", "1", "READY"),
        ("tiny", "1", "READY"),
        ("tiny", "2", "READY"),
    }
    client.unload_model("spare")
    assert not client.is_model_ready("spare")
    # As in Triton, a model unloaded on request is not meant to be served, so the server stays ready.
    assert client.is_server_ready()
    states = {m["name"]: m["state"] for m in client.get_model_repository_index(as_json=True)["models"]}
    assert states["spare"] == "UNAVAILABLE"
    tensor = tc.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("spare", [tensor])
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    labels = {"model": "spare", "version": "1", "outcome": "unavailable"}
    assert kserve_server.metric("resnet_serve_requests_total", **labels) == 1
    client.load_model("spare")
    assert client.is_model_ready("spare")
    assert client.infer("spare", [tensor]).as_numpy("logits").shape == (1, 10)


def test_loading_a_model_that_is_not_in_the_repository_is_not_found(client: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.load_model("no-such-model")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_loading_a_path_outside_the_repository_is_not_found(client: tc.InferenceServerClient) -> None:
    for name in ("", "..", "../repository", "tiny/1"):
        with pytest.raises(InferenceServerException) as info:
            client.load_model(name)
        assert info.value.status() == "StatusCode.NOT_FOUND", name


def test_log_settings_are_unimplemented(client: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_log_settings()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"


def test_service_is_listed_by_grpc_reflection(kserve_server: KServeServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(kserve_server.url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "inference.GRPCInferenceService" in names
