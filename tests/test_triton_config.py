"""Triton's config.pbtxt: parsed by protobuf's text format against Triton's schema, served with the settings
it states (ModelConfig shows them), ignored fields warned about once by name, mismatches refused by field,
and written by `package --format triton`."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as tc_aio
from prometheus_client import CollectorRegistry
from support.tiny_model import write_tiny_onnx

from resnet_serve.export.package import ServingSettings, package
from resnet_serve.formats.repository import TRITON_CONFIG_NAME, RepositoryError, read_model
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.errors import ServeError
from resnet_serve.server.models.manager import ModelManager
from resnet_serve.server.models.triton_config import parse, read_config
from resnet_serve.server.observability.metrics import ServerMetrics

TINY = """
name: "tiny"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "input", data_type: TYPE_FP32, dims: [ 1, 8, 8 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 10 ] } ]
instance_group [ { count: 2, kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 7, default_timeout_microseconds: 250000 }
}
"""
IGNORED = """
optimization { cuda { graphs: true } }
parameters { key: "foo" value { string_value: "bar" } }
"""


def triton_repo(tmp_path: Path, config: str = TINY, name: str = "tiny") -> Path:
    repo = tmp_path / "repo"
    write_tiny_onnx(repo / name / "1" / "model.onnx")
    (repo / name / TRITON_CONFIG_NAME).write_text(config)
    return repo


def manager_for(repo: Path, *models: ModelSettings) -> ModelManager:
    config = ServerConfig(model_repository=str(repo), models=models)
    return ModelManager(config, ServerMetrics(registry=CollectorRegistry()))


def load_error(repo: Path) -> str:
    async def main() -> str:
        manager = manager_for(repo)
        try:
            with pytest.raises(ServeError) as info:
                await manager.start()
        finally:
            await manager.close(5)
        return info.value.message

    return asyncio.run(main())


def test_every_field_we_act_on_is_read_and_the_rest_are_named_by_dotted_path(tmp_path: Path) -> None:
    repo = triton_repo(tmp_path, TINY + IGNORED + "instance_group [ { count: 1, gpus: [ 1 ] } ]\n")
    cfg = read_config(repo / "tiny")
    assert (cfg.backend, cfg.max_batch_size, cfg.instances, cfg.device) == ("onnxruntime", 8, 3, "cpu")
    assert (cfg.preferred_batch_sizes, cfg.max_queue_delay_us) == ((2, 4), 500)
    assert (cfg.max_queue_size, cfg.timeout_us) == (7, 250000)
    assert [(t.field, t.name, t.datatype, t.dims) for t in cfg.inputs] == [
        ("input[0]", "input", "FP32", (1, 8, 8))
    ]
    assert cfg.ignored == ("instance_group.gpus", "optimization.cuda.graphs", "parameters.foo")


def test_platform_names_map_to_our_backends_and_an_unserved_one_is_refused(tmp_path: Path) -> None:
    repo = triton_repo(tmp_path, 'platform: "tensorrt_plan"')
    assert read_config(repo / "tiny").backend == "tensorrt"
    assert read_config(repo / "tiny").model_filename == "model.plan"
    (repo / "tiny" / TRITON_CONFIG_NAME).write_text('platform: "tensorflow_savedmodel"')
    with pytest.raises(RepositoryError, match="platform 'tensorflow_savedmodel' is not served here"):
        read_config(repo / "tiny")


def test_a_field_triton_does_not_know_is_a_parse_error_naming_its_line() -> None:
    with pytest.raises(RepositoryError) as info:
        parse('name: "tiny"\nmax_batch_size: 8\ncount: 2\n', "m/config.pbtxt")
    assert str(info.value).startswith("m/config.pbtxt:3:1 : ")
    assert 'no field named "count"' in str(info.value)


@pytest.mark.slow
def test_a_triton_repository_is_served_with_its_instances_delay_and_preferred_sizes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = triton_repo(tmp_path, TINY + IGNORED)
    config = ServerConfig(
        host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=-1, model_repository=str(repo)
    )

    async def main() -> dict[str, object]:
        server = InferenceServer(config, ServerMetrics(registry=CollectorRegistry()))
        await server.start()
        try:
            client = tc_aio.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            answer = await client.get_model_config("tiny", as_json=True)
            tensor = tc_aio.InferInput("input", [3, 1, 8, 8], "FP32")
            tensor.set_data_from_numpy(np.zeros((3, 1, 8, 8), np.float32))
            result = await client.infer("tiny", [tensor])
            assert result.as_numpy("logits").shape == (3, 10)
            await client.close()
            return dict(answer["config"])
        finally:
            await server.stop(5)

    with caplog.at_level(logging.WARNING, logger="resnet_serve"):
        served = asyncio.run(main())
    assert served["instance_group"][0]["count"] == 2  # type: ignore[index]
    batching = served["dynamic_batching"]
    assert batching["preferred_batch_size"] == [2, 4]  # type: ignore[index]
    assert batching["max_queue_delay_microseconds"] == "500"  # type: ignore[index]  # uint64: JSON string
    assert batching["default_queue_policy"]["max_queue_size"] == 7  # type: ignore[index]
    assert served["max_batch_size"] == 8
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for field in ("optimization.cuda.graphs", "parameters.foo"):
        assert len([w for w in warnings if field in w]) == 1, warnings
    assert len(warnings) == 2, warnings


def test_dims_that_do_not_match_the_model_are_refused_naming_the_field(tmp_path: Path) -> None:
    repo = triton_repo(tmp_path, TINY.replace("dims: [ 1, 8, 8 ]", "dims: [ 3, 224, 224 ]"))
    message = load_error(repo)
    assert "input[0].dims [3, 224, 224] do not match the model's 'input' [1, 8, 8]" in message
    assert str(repo / "tiny" / TRITON_CONFIG_NAME) in message


def test_a_datatype_or_name_the_model_lacks_is_refused_naming_the_field(tmp_path: Path) -> None:
    repo = triton_repo(tmp_path, TINY.replace("data_type: TYPE_FP32, dims: [ 10 ]", "data_type: TYPE_INT64"))
    assert "output[0].data_type TYPE_INT64 does not match the model's 'logits' (FP32)" in load_error(repo)
    (repo / "tiny" / TRITON_CONFIG_NAME).write_text(TINY.replace('name: "input"', 'name: "pixels"'))
    assert "input[0].name 'pixels' is not an input of the model (its inputs: input)" in load_error(repo)


def test_version_policy_latest_num_versions_serves_the_highest_ones(tmp_path: Path) -> None:
    repo = triton_repo(tmp_path, TINY + "version_policy { latest { num_versions: 2 } }")
    for v in ("2", "3"):
        write_tiny_onnx(repo / "tiny" / v / "model.onnx", seed=int(v))

    async def main() -> list[str]:
        manager = manager_for(repo)
        await manager.start()
        served = [m.version for m in manager.versions("tiny")]
        await manager.close(5)
        return served

    assert asyncio.run(main()) == ["2", "3"]


def test_package_format_triton_round_trips_and_keeps_both_files_in_step(tmp_path: Path) -> None:
    onnx_file = write_tiny_onnx(tmp_path / "tiny.onnx")
    repo = tmp_path / "repo"
    settings = ServingSettings(
        max_batch_size=6, preferred_batch_sizes=[2, 4], max_queue_delay_us=2000, instance_count=2
    )
    package(onnx_file, repo, "tiny", settings=settings, repository_format="triton")
    cfg = read_config(repo / "tiny")
    assert (cfg.max_batch_size, cfg.preferred_batch_sizes, cfg.instances) == (6, (2, 4), 2)
    assert cfg.max_queue_delay_us == 2000 and cfg.backend == "onnxruntime" and cfg.device == ""
    assert cfg.ignored == ()  # the writer writes only what the reader acts on
    assert list(cfg.labels) == read_model(repo / "tiny").labels
    assert [(t.name, t.datatype, t.dims) for t in cfg.inputs] == [("input", "FP32", (1, 8, 8))]
    # A later version without --format keeps the config.pbtxt in step with config.json.
    package(onnx_file, repo, "tiny", settings=ServingSettings(max_queue_delay_us=300))
    assert read_config(repo / "tiny").max_queue_delay_us == 300
    with pytest.raises(RepositoryError, match="package with --format triton to rewrite it"):
        package(onnx_file, repo, "tiny", repository_format="resnet-serve")

    async def main() -> tuple[int, float, tuple[int, ...]]:
        manager = manager_for(repo)
        await manager.start()
        model = manager.get("tiny")
        await manager.close(5)
        return (
            len(model.backends),
            model.settings.batching.max_queue_delay_ms,
            (model.batcher.max_batch_size,),
        )

    assert asyncio.run(main()) == (2, 0.3, (6,))


def test_config_pbtxt_wins_over_config_json_and_the_servers_model_table_wins_over_both(
    tmp_path: Path,
) -> None:
    onnx_file = write_tiny_onnx(tmp_path / "tiny.onnx")
    repo = tmp_path / "repo"
    package(onnx_file, repo, "tiny", settings=ServingSettings(max_batch_size=6, preferred_batch_sizes=[2]))
    (repo / "tiny" / TRITON_CONFIG_NAME).write_text(TINY)
    table = ModelSettings(
        name="tiny", path=str(repo / "tiny"), instances=1, explicit=frozenset({"instances"})
    )

    async def main() -> tuple[int, int, tuple[int, ...]]:
        manager = manager_for(repo, table)
        await manager.start()
        model = manager.get("tiny")
        await manager.close(5)
        return (
            len(model.backends),
            model.batcher.max_batch_size,
            model.settings.batching.preferred_batch_sizes,
        )

    assert asyncio.run(main()) == (1, 8, (2, 4))


def test_what_a_config_pbtxt_leaves_out_is_config_jsons(tmp_path: Path) -> None:
    onnx_file = write_tiny_onnx(tmp_path / "tiny.onnx")
    repo = tmp_path / "repo"
    settings = ServingSettings(max_batch_size=6, preferred_batch_sizes=[2], max_queue_delay_us=700)
    package(onnx_file, repo, "tiny", settings=settings)
    (repo / "tiny" / TRITON_CONFIG_NAME).write_text("instance_group [ { count: 2 } ]\n")

    async def main() -> tuple[int, int, tuple[int, ...], float]:
        manager = manager_for(repo)
        await manager.start()
        model = manager.get("tiny")
        await manager.close(5)
        b = model.settings.batching
        return len(model.backends), b.max_batch_size, b.preferred_batch_sizes, b.max_queue_delay_ms

    assert asyncio.run(main()) == (2, 6, (2,), 0.7)


def test_the_package_command_writes_a_config_pbtxt_triton_parses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as triton_schema  # Triton's own copy of the schema

    from resnet_serve.cli.main import main

    onnx_file = write_tiny_onnx(tmp_path / "tiny.onnx")
    args = [
        "package",
        str(onnx_file),
        "--repo",
        str(tmp_path / "repo"),
        "--name",
        "tiny",
        "--format",
        "triton",
    ]
    assert main([*args, "--instances", "3"]) == 0
    text = (tmp_path / "repo" / "tiny" / TRITON_CONFIG_NAME).read_text()
    theirs = text_format.Parse(text, triton_schema.ModelConfig())
    assert (theirs.platform, theirs.instance_group[0].count) == ("onnxruntime_onnx", 3)
    assert theirs.output[0].label_filename == "labels.txt"
    assert (tmp_path / "repo" / "tiny" / "labels.txt").read_text().splitlines() == [
        f"class-{i}" for i in range(10)
    ]


# ----------------------------------------------------------------- reshape, format and model_warmup (#23)


def test_reshape_format_and_model_warmup_are_read_and_checked_by_field(tmp_path: Path) -> None:
    from triton_models import DENSENET_SIZE as S
    from triton_models import densenet_config, write_densenet_like

    repo = tmp_path / "repo"
    cfg = read_config(write_densenet_like(repo))
    (data,) = cfg.inputs
    assert (data.dims, data.reshape, data.format) == ((3, S, S), (1, 3, S, S), "FORMAT_NCHW")
    assert cfg.outputs[0].reshape == (1, 10, 1, 1) and cfg.ignored == ()
    (repo / "densenet_like" / "config.pbtxt").write_text(densenet_config(fmt="FORMAT_NHWC"))
    assert read_config(repo / "densenet_like").inputs[0].format == "FORMAT_NHWC"
    bad = {
        densenet_config().replace(
            f"shape: [ 1, 3, {S}, {S} ]", "shape: [ 1, 3, 2 ]"
        ): "holds 6 elements but dims",
        densenet_config().replace(
            f"dims: [ 3, {S}, {S} ]", f"dims: [ 3, {S * S} ]"
        ): "FORMAT_NCHW needs 3 dims",
        densenet_config() + WARMUP_NO_DATA: "expects input 'data_0' to have input_data_type set",
        densenet_config() + WARMUP_NO_DATA.replace("dims: [ 3 ]", "dims: [ -1 ] zero_data: true"): (
            "expects all variable-size dimensions are specified for input 'data_0'"
        ),
        densenet_config() + WARMUP_NO_DATA.replace("dims: [ 3 ]", 'dims: [ 3 ] input_data_file: "../x"'): (
            "must name a file in"
        ),
        densenet_config() + WARMUP_NO_DATA.replace("batch_size: 1", "batch_size: 2"): (
            "batch_size must be 1 for a model without batching"
        ),
    }
    for text, message in bad.items():
        (repo / "densenet_like" / "config.pbtxt").write_text(text)
        with pytest.raises(RepositoryError, match=re.escape(message)):
            read_config(repo / "densenet_like")


WARMUP_NO_DATA = """
model_warmup [ { name: "w" batch_size: 1
  inputs { key: "data_0" value: { data_type: TYPE_FP32 dims: [ 3 ] } } } ]
"""


def test_a_model_warmup_that_does_not_fit_or_fails_fails_the_load_naming_the_sample(tmp_path: Path) -> None:
    from triton_models import SIMPLE_STRING_CONFIG, write_simple_string, write_variable_int32

    sample = 'model_warmup [ {{ name: "s" batch_size: 2 inputs {{ key: "INPUT0" value: {{ {} }} }} }} ]'
    short = sample.format('data_type: TYPE_INT32 dims: [ 4 ] input_data_file: "short"')
    directory = write_variable_int32(tmp_path / "a", warmup=short)
    (directory / "warmup").mkdir()
    (directory / "warmup" / "short").write_bytes(b"\x00" * 15)
    assert "warmup setting expects 16 bytes, but the data provided from" in load_error(tmp_path / "a")
    wrong = sample.format("data_type: TYPE_FP32 dims: [ 4 ] zero_data: true")
    write_variable_int32(tmp_path / "b", warmup=wrong)
    assert "model_warmup[0] ('s'): input 'INPUT0' is INT32 in the model, not FP32" in load_error(
        tmp_path / "b"
    )
    # Asked for, a warmup that fails is a load failure: simple_string cannot Cast empty strings to numbers.
    zeros = "data_type: TYPE_STRING dims: [ 16 ] zero_data: true"
    both = (
        f'model_warmup [ {{ name: "s" batch_size: 2 inputs {{ key: "INPUT0" value: {{ {zeros} }} }} '
        f'inputs {{ key: "INPUT1" value: {{ {zeros} }} }} }} ]'
    )
    write_simple_string(tmp_path / "c", SIMPLE_STRING_CONFIG + both)
    assert "model 'simple_string': warmup 's' failed" in load_error(tmp_path / "c")


def test_model_warmup_data_files_become_the_sample_rows(tmp_path: Path) -> None:
    from triton_models import SIMPLE_STRING_CONFIG, write_simple_string

    from resnet_serve.formats.bytes_tensor import serialize
    from resnet_serve.runtime.factory import InstanceOptions, create_backends
    from resnet_serve.server.models.warmup import configured_runs

    sample = """model_warmup [ { name: "s" batch_size: 3 count: 2
      inputs { key: "INPUT0" value: { data_type: TYPE_STRING dims: [ 16 ] input_data_file: "a" } }
      inputs { key: "INPUT1" value: { data_type: TYPE_STRING dims: [ 16 ] random_data: true } } } ]"""
    directory = write_simple_string(tmp_path, SIMPLE_STRING_CONFIG + sample)
    (directory / "warmup").mkdir()
    (directory / "warmup" / "a").write_bytes(serialize([str(i).encode() for i in range(16)]))
    cfg = read_config(directory)
    (backend,) = create_backends(directory / "1" / "model.onnx", "onnxruntime", 1, InstanceOptions())
    (run,) = configured_runs(cfg.warmup, backend.info, "simple_string")
    assert run.count == 2 and run.feeds["INPUT0"].shape == (3, 16)
    assert run.feeds["INPUT0"][2].tolist() == [str(i).encode() for i in range(16)]
    assert run.feeds["INPUT1"].tolist() == [[b""] * 16] * 3  # random_data for strings: empty (Triton's)
