"""Server configuration: TOML < env < flags, per-model tables, validation, and `serve --help`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from resnet_serve.cli.commands.serve import configure_parser
from resnet_serve.server.config import OPTIONS, ConfigError, ServerConfig, load_config

REPO = Path(__file__).resolve().parents[1]


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
