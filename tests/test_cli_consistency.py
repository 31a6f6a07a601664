"""What every subcommand has in common: `--help` shows each default once, an error is one line that names
the command, and a progress bar never writes carriage returns into a pipe."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from resnet_serve.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _option_entries(text: str) -> list[str]:
    """Each option's help entry: from its `  -x, --name` line to the next option or section."""
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"^  -", line) or re.match(r"^  \w", line):
            entries.append(line)
        elif entries and line.startswith("   "):
            entries[-1] += " " + line.strip()
        else:
            entries.append("") if entries and entries[-1] else None
    return [e for e in entries if e]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_states_each_default_once_and_never_none(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(command, capsys)
    assert "(default: None)" not in text
    twice = [e for e in _option_entries(text) if len(re.findall(r"[(\[]default\b", e)) > 1]
    assert not twice, "\n".join(twice)


def test_train_help_shows_its_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help("train", capsys).split())
    assert "(default: resnet20)" in text and "(default: 20)" in text and "[default:" not in text


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["package", "missing.onnx", "--repo", "REPO", "--name", "m"], "package"),
        (["verify", "--onnx", "missing.onnx", "--json", "OUT/v.json"], "verify"),
        (["bench", "--concurrency", "0", "--out", "OUT"], "bench"),
        (["train", "--epochs", "0", "--out", "OUT/m.pt"], "train"),
    ],
)
def test_every_commands_error_is_one_line_naming_the_command(
    argv: list[str], command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.replace("REPO", str(tmp_path / "repo")).replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"resnet-serve {command}: error: ") and "\n" not in err, err


@pytest.fixture
def health_server() -> Iterator[str]:
    """grpcio's own health service on a free port, serving '' only."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_health_of_an_unknown_service_says_why(
    health_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["health", "--server", health_server, "--service", "digits", "--timeout", "5"]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("NOT_FOUND: ") and "\n" not in line
    reason = line.split(": ", 2)[-1]
    assert "'digits'" in reason and "inference.GRPCInferenceService" in reason, line
