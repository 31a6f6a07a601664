"""Server configuration: TOML < env < flags, per-model tables, validation, and `serve --help`."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from resnet_serve.cli.commands.entrypoint import EngineSettings
from resnet_serve.cli.commands.serve import configure_parser
from resnet_serve.formats.decode import PILLOW_MAX_PIXELS
from resnet_serve.formats.environment import TOKEN_ENV
from resnet_serve.server.config import (
    OPTIONS,
    ConfigError,
    Option,
    ServerConfig,
    load_config,
    option,
    read_sources,
    unknown_env,
)
from resnet_serve.server.config.options import options_of
from resnet_serve.server.security import restrict
from resnet_serve.server.security.restrict import Restriction

REPO = Path(__file__).resolve().parents[1]

OVER_PILLOWS_CEILING = str(PILLOW_MAX_PIXELS + 1)  # a max_image_pixels that Pillow would not honour


def parse(*argv: str) -> dict[str, Any]:
    """The flags given, as `resnet-serve serve` passes them to load_config."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return vars(parser.parse_args(list(argv)))


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return str(path)


def test_flags_beat_env_beat_toml_beat_defaults(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, '[server]\ngrpc_port = 9000\n[models.a]\npath = "a.onnx"\n')
    env = {"RESNET_SERVE_GRPC_PORT": "9001"}
    assert load_config(parse("--config", toml, "--grpc-port", "9002"), env).grpc_port == 9002
    assert load_config(parse("--config", toml), env).grpc_port == 9001
    assert load_config(parse("--config", toml), {}).grpc_port == 9000
    assert load_config(parse("--model", "a=a.onnx"), {}).grpc_port == ServerConfig().grpc_port == 8001
    assert load_config(parse(), {"RESNET_SERVE_CONFIG": toml}).grpc_port == 9000


def test_model_tables_override_the_model_defaults(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        """
[model_defaults]
max_batch_size = 8
max_queue_delay_ms = 2

[models.a]
path = "a.onnx"
max_batch_size = 4
preferred_batch_sizes = [2, 4]
instances = 2
""",
    )
    config = load_config(parse("--config", toml, "--model", "b=b.onnx", "--max-batch-size", "16"), {})
    models = {m.name: m for m in config.models}
    assert models["a"].batching.max_batch_size == 4
    assert models["a"].batching.preferred_batch_sizes == (2, 4)
    assert models["a"].batching.max_queue_delay_ms == 2.0
    assert models["a"].instances == 2
    assert models["b"].batching.max_batch_size == 16
    assert models["b"].path == "b.onnx"
    assert config.model_defaults.batching.max_batch_size == 16  # what repository models get


def test_env_sets_lists_and_booleans() -> None:
    env = {
        "RESNET_SERVE_MODEL": "a=a.onnx,b=b.onnx",
        "RESNET_SERVE_PREFERRED_BATCH_SIZES": "4, 8",
        "RESNET_SERVE_WARMUP": "false",
    }
    config = load_config(parse(), env)
    assert [m.name for m in config.models] == ["a", "b"]
    assert all(m.batching.preferred_batch_sizes == (4, 8) and not m.warmup for m in config.models)


@pytest.mark.parametrize(
    ("toml", "argv", "env", "message"),
    [
        ("[server]\ngrpc_prot = 1\n", (), {}, "grpc_prot"),
        ('[server]\ngrpc_port = "x"\n', (), {}, "grpc_port"),
        ('[models.a]\npath = "a.onnx"\nmax_batch = 3\n', (), {}, "max_batch"),
        ("[models.a]\nmax_batch_size = 3\n", (), {}, "has no path"),
        ("", ("--model", "a.onnx"), {}, "NAME=PATH"),
        ("", (), {}, "no models to serve"),
        ("", ("--model", "a=a.onnx", "--max-batch-size", "0"), {}, "max_batch_size"),
        ("", ("--model", "a=a.onnx", "--preferred-batch-sizes", "64"), {}, "preferred_batch_sizes"),
        ("", ("--model", "a=a.onnx", "--version-policy", "specific"), {}, "versions"),
        ("", ("--model", "a=a.onnx"), {"RESNET_SERVE_GRPC_PORT": "eighty"}, "RESNET_SERVE_GRPC_PORT"),
        ("[server]\ngrpc_port = 70000\n", ("--model", "a=a.onnx"), {}, "grpc_port"),
        # Pillow refuses more pixels whatever the limit says: a limit above its ceiling would not hold
        ("", ("--model", "a=a.onnx", "--max-image-pixels", OVER_PILLOWS_CEILING), {}, "max_image_pixels"),
    ],
)
def test_invalid_configuration_names_the_option(
    tmp_path: Path, toml: str, argv: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    args = parse("--config", write_toml(tmp_path, toml), *argv) if toml else parse(*argv)
    with pytest.raises(ConfigError, match=message):
        load_config(args, env)


def test_help_documents_every_option_with_its_default_and_env_var() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    configure_parser(parser)
    text = " ".join(parser.format_help().split())
    for opt in OPTIONS:
        assert opt.flag in text
        assert opt.env in text
    assert "(default: 8001; env RESNET_SERVE_GRPC_PORT)" in text
    assert "(default: None)" not in text
    # An option that takes one of a few values lists them, as a user needs them to pick one
    chosen = [opt for opt in OPTIONS if opt.choices]
    assert {"image_decoder", "inference_precision"} <= {opt.key for opt in chosen}
    for opt in chosen:
        assert f"one of {', '.join(opt.choices)} (default: {opt.shown_default}; env {opt.env})" in text


def test_serve_refuses_bad_input_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "resnet_serve", "serve", "--grpc-port", "0", "--metrics-port", "-1"]
    bad_config = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad_config.returncode == 2
    assert "no models to serve" in bad_config.stderr and "Traceback" not in bad_config.stderr
    missing = subprocess.run(
        [*run, "--model", f"a={tmp_path / 'missing.onnx'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "missing.onnx" in missing.stderr and "Traceback" not in missing.stderr


# ------------------------------------------------------------------ every option, every source, one check
# What each option's name was before the declaration moved to pydantic: users, scripts and docs spell them.
NAMES_IN_USE = (
    "host",
    "grpc_port",
    "http_port",
    "metrics_port",
    "metrics",
    "model_repository",
    "default_model",
    "preprocess_threads",
    "max_image_bytes",
    "max_image_pixels",
    "jpeg_draft",
    "image_formats",
    "image_decoder",
    "max_decode_memory_mib",
    "grace_period_s",
    "grpc_use_ssl",
    "grpc_server_cert",
    "grpc_server_key",
    "grpc_root_cert",
    "grpc_use_ssl_mutual",
    "grpc_restricted_protocol",
    "model_control_mode",
    "auth_token_file",
    "grpc_max_message_bytes",
    "grpc_max_concurrent_streams",
    "grpc_keepalive_time",
    "grpc_keepalive_timeout",
    "grpc_keepalive_permit_without_calls",
    "grpc_http2_min_recv_ping_interval",
    "grpc_http2_max_ping_strikes",
    "grpc_max_connection_age_ms",
    "grpc_max_connection_age_grace_ms",
    "exit_on_error",
    "triton_metrics",
    "backend",
    "device",
    "instances",
    "intra_op_threads",
    "intra_op_spinning",
    "version_policy",
    "versions",
    "warmup",
    "inference_precision",
    "performance_mode",
    "openvino_cache_dir",
    "max_batch_size",
    "max_queue_delay_ms",
    "preferred_batch_sizes",
    "max_queue_size",
    "timeout_ms",
)
# A valid value other than the default for the options whose type alone does not say one: (text, TOML, value).
CHOSEN: dict[str, tuple[str, Any, Any]] = {
    "host": ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
    "image_formats": ("png,jpeg", "png,jpeg", "png,jpeg"),
    "image_decoder": ("turbo", "turbo", "turbo"),
    "version_policy": ("all", "all", "all"),
    "inference_precision": ("bf16", "bf16", "bf16"),
    "performance_mode": ("throughput", "throughput", "throughput"),
    "model_control_mode": ("EXPLICIT", "explicit", "explicit"),
    "workers": ("3", 3, "3"),
    "grpc_restricted_protocol": (
        "inference:k=v",
        ["inference:k=v"],
        (Restriction(frozenset({"inference"}), "k", "v"),),
    ),
}
CHOICES = {"image_formats", "image_decoder", "version_policy", "inference_precision", "performance_mode",
           "model_control_mode", "grpc_restricted_protocol", "workers"}  # fmt: skip


def chosen(opt: Option) -> tuple[str, Any, Any]:
    """A valid value other than the default, as text (flag, env), as a TOML value, and as read."""
    if opt.key in CHOSEN:
        return CHOSEN[opt.key]
    default = opt.default
    if isinstance(default, bool):
        return str(not default).lower(), not default, not default
    if isinstance(default, int):
        return str(default + 1), default + 1, default + 1
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5, default + 1.5
    if isinstance(default, tuple):
        return "1,2", [1, 2], (1, 2)
    return "some/value", "some/value", "some/value"


def bad_values(opt: Option) -> list[str]:
    """Values the option must refuse: the wrong type, and just past its lower limit."""
    default = opt.default
    if isinstance(default, str):
        return ["nonsense"] if opt.key in CHOICES else []
    bad = ["maybe"] if isinstance(default, bool) else ["x"]
    bad += [str(m.ge - 1) for m in opt.info.metadata if hasattr(m, "ge")]
    return bad


def toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def read_as(source: str, opt: Option, key: str, given: Any, tmp_path: Path) -> Any:
    """Give `key` (the option's or its alias's) `given` through one source: what the option reads."""
    if source == "flag":
        values = read_sources(parse("--" + key.replace("_", "-"), str(given)), {})
    elif source == "env":
        values = read_sources({}, {"RESNET_SERVE_" + key.upper(): str(given)})
    else:
        table = {"[server]": "[server]", "[model_defaults]": "[model_defaults]"}.get(source, source)
        body = f"{table}\n{key} = {toml_value(given)}\n" + ('path = "a.onnx"\n' if "models." in table else "")
        values = read_sources({"config": write_toml(tmp_path, body)}, {})
    layer = {"server": values.server, "model": values.model_defaults}[opt.scope]
    return values.models["a"][opt.key] if "models." in source else layer[opt.key]


def sources_of(opt: Option) -> list[str]:
    sources = (["flag"] if opt.has_flag else []) + ["env"]
    if opt.in_toml:
        sources += ["[server]"] if opt.scope == "server" else ["[model_defaults]", "[models.a]"]
    return sources


def without_source(message: str) -> str:
    return re.sub(r" \([^()]*\)$", "", message)


def test_every_option_in_use_keeps_its_name() -> None:
    spelled = {o.key for o in OPTIONS} | {o.alias.key for o in OPTIONS if o.alias}
    assert set(NAMES_IN_USE) <= spelled
    assert option("auth_token").env == TOKEN_ENV  # the one name the client commands read too


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.key)
def test_every_option_reads_alike_from_its_flag_its_variable_and_its_toml_key(
    opt: Option, tmp_path: Path
) -> None:
    text, in_toml, value = chosen(opt)
    for source in sources_of(opt):
        given = in_toml if source.startswith("[") else text
        assert read_as(source, opt, opt.key, given, tmp_path) == value, source
    for bad in bad_values(opt):
        messages = set()
        for source in sources_of(opt):
            with pytest.raises(ConfigError) as info:
                read_as(source, opt, opt.key, bad, tmp_path)
            message = str(info.value)
            assert opt.key in message and "\n" not in message, message
            messages.add(without_source(message))
        assert len(messages) == 1, messages  # the same check, whichever way the value came


def test_the_queue_delay_is_microseconds_and_milliseconds_an_alias_in_every_source(tmp_path: Path) -> None:
    opt = option("max_queue_delay_us")
    for source in sources_of(opt):
        assert read_as(source, opt, "max_queue_delay_us", 2500, tmp_path) == 2500, source
        assert read_as(source, opt, "max_queue_delay_ms", 2.5, tmp_path) == 2500, source
    for bad in ("x", "inf", "-1"):
        messages = set()
        for source in sources_of(opt):
            with pytest.raises(ConfigError) as info:
                read_as(source, opt, "max_queue_delay_ms", bad, tmp_path)
            messages.add(without_source(str(info.value)))
        assert len(messages) == 1, messages
    config = load_config(parse("--model", "a=a.onnx", "--max-queue-delay-ms", "0.5"), {})
    assert config.models[0].batching.max_queue_delay_us == 500
    assert config.models[0].batching.max_queue_delay_ms == 0.5
    # Precedence holds across the two spellings: a flag in ms beats a variable in µs.
    env = {"RESNET_SERVE_MAX_QUEUE_DELAY_US": "7000"}
    assert (
        load_config(
            parse("--model", "a=a.onnx", "--max-queue-delay-ms", "2"), env
        ).model_defaults.batching.max_queue_delay_us
        == 2000
    )
    with pytest.raises(ConfigError, match="give one"):
        load_config(
            parse("--model", "a=a.onnx", "--max-queue-delay-ms", "2", "--max-queue-delay-us", "5"), {}
        )


@pytest.mark.parametrize("argv", [("4", "8"), ("4,8",), ("4, 8",), ("4,", "8")])
def test_preferred_batch_sizes_take_words_or_commas(argv: tuple[str, ...]) -> None:
    config = load_config(parse("--model", "a=a.onnx", "--preferred-batch-sizes", *argv), {})
    assert config.models[0].batching.preferred_batch_sizes == (4, 8)


def test_the_settings_round_trip_through_json_exactly(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        '[models.a]\npath = "a"\nversion_policy = "specific"\nversions = [1, 3]\ninstances = 2\n',
    )
    config = load_config(
        parse(
            "--config", toml, "--model", "b=b.onnx", "--grpc-use-ssl", "--grpc-server-cert", "c.pem",
            "--grpc-server-key", "k.pem", "--grpc-restricted-protocol", "inference,metadata:key=s3cret",
            "--preferred-batch-sizes", "2", "4", "--max-queue-delay-ms", "1.5", "--timeout-ms", "2.5",
            "--image-formats", "png,tiff", "--model-control-mode", "explicit", "--jpeg-draft", "false",
        ),
        {TOKEN_ENV: "t" * 24},
    )  # fmt: skip
    text = config.model_dump_json()
    again = ServerConfig.model_validate_json(text)
    assert again == config
    assert again.model_dump_json() == text
    assert again.models[0].explicit == {"version_policy", "versions", "instances"}
    assert again.grpc_restricted_protocol[0].matches("s3cret") and again.auth_token == "t" * 24
    assert "s3cret" not in repr(again) and "t" * 24 not in repr(again)


def test_options_in_the_wrong_table_and_misspelt_ones_are_named(tmp_path: Path) -> None:
    wrong = write_toml(tmp_path, "[server]\nmax_batch_size = 4\n")
    with pytest.raises(ConfigError, match=r"max_batch_size is a model option: set it in \[model_defaults\]"):
        load_config(parse("--config", wrong, "--model", "a=a.onnx"), {})
    misspelt = write_toml(tmp_path, "[server]\ngrpc_prot = 1\n")
    with pytest.raises(ConfigError, match="did you mean grpc_port"):
        load_config(parse("--config", misspelt, "--model", "a=a.onnx"), {})


def test_a_misspelt_table_an_option_outside_its_table_and_a_binary_file_are_refused(tmp_path: Path) -> None:
    # Each was ignored (or a traceback): the server started without the settings the file was meant to give.
    table = write_toml(tmp_path, "[sever]\ngrpc_port = 9000\n")
    with pytest.raises(
        ConfigError, match=r"unknown table or key 'sever' in .* \(did you mean \[server\]\?\)"
    ):
        load_config(parse("--config", table, "--model", "a=a.onnx"), {})
    outside = write_toml(tmp_path, "grpc_port = 9000\n")
    with pytest.raises(
        ConfigError, match=r"grpc_port is a server option: set it in \[server\], not at the top"
    ):
        load_config(parse("--config", outside, "--model", "a=a.onnx"), {})
    binary = tmp_path / "model.onnx"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="is not valid TOML: it is not UTF-8 text"):
        load_config(parse("--config", str(binary), "--model", "a=a.onnx"), {})


def test_an_empty_host_is_refused_before_anything_starts() -> None:
    # It passed, and the server failed once its models had loaded ("cannot serve metrics on :0").
    with pytest.raises(ConfigError, match="host is empty: give the address to listen on"):
        load_config(parse("--model", "a=a.onnx"), {"RESNET_SERVE_HOST": ""})


def test_a_misspelt_variable_is_named_with_the_setting_it_resembles() -> None:
    env = {
        "RESNET_SERVE_GRPC_PROT": "1",
        "RESNET_SERVE_GRPC_PORT": "1",
        "RESNET_SERVE_AUTH_TOKEN": "x",
        "HOME": "/",
    }
    [line] = unknown_env(env)
    assert line.startswith("RESNET_SERVE_GRPC_PROT is not a setting of resnet-serve; ignored")
    assert line.endswith("(did you mean RESNET_SERVE_GRPC_PORT?)")
    engine = options_of(EngineSettings, "")  # the container entrypoint's own, passed by it
    assert unknown_env({"RESNET_SERVE_BUILD_ENGINES": "true"}, engine) == []
    assert unknown_env({"RESNET_SERVE_BUILD_ENGINES": "true"}) != []


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        (["--max-batch-size", "0"], {}, "max_batch_size must be >= 1, got 0 (--max-batch-size)"),
        (
            [],
            {"RESNET_SERVE_WARMUP": "maybe"},
            "warmup: expected true or false, got 'maybe' (env RESNET_SERVE_WARMUP)",
        ),
    ],
)
def test_a_bad_value_stops_serve_with_one_line_naming_it_and_no_pydantic_dump(
    argv: list[str], env: dict[str, str], line: str
) -> None:
    run = [sys.executable, "-m", "resnet_serve", "serve", "--model", "a=a.onnx", *argv]
    done = subprocess.run(
        run, cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("invalid configuration: " + line), done.stderr
    assert "validation error" not in done.stderr and "pydantic" not in done.stderr


def test_health_asks_the_port_the_servers_variable_names() -> None:
    run = [sys.executable, "-m", "resnet_serve", "health", "--help"]
    bad = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RESNET_SERVE_GRPC_PORT": "eighty"})  # fmt: skip
    assert bad.returncode == 2 and "grpc_port: expected a whole number, got 'eighty'" in bad.stderr
    assert "Traceback" not in bad.stderr


DOC = REPO / "docs" / "server.md"


def test_the_docs_table_lists_every_option_with_its_variable_and_default() -> None:
    section = DOC.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2].strip("`"))
    assert sorted(rows) == sorted(o.key for o in OPTIONS), "docs/server.md's table and the options differ"
    for opt in OPTIONS:
        assert rows[opt.key] == (opt.env, opt.shown_default), opt.key


def test_a_restrictions_groups_are_sorted_in_json_so_the_same_settings_give_the_same_bytes() -> None:
    groups = [g for g in restrict.GROUPS if g != restrict.HEALTH][::-1]
    config = load_config(
        parse("--model", "a=a.onnx", "--grpc-restricted-protocol", f"{','.join(groups)}:key=value"), {}
    )
    dumped = json.loads(config.model_dump_json())["grpc_restricted_protocol"][0]["groups"]
    assert dumped == sorted(groups)
    assert ServerConfig.model_validate_json(config.model_dump_json()) == config
