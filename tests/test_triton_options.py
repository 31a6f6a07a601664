"""Triton's server options (issue #23; docs/server.md, "Triton's options"): one address per endpoint,
--allow-grpc/--allow-http/--allow-metrics, --strict-readiness, --exit-timeout-secs, --log-verbose,
--model-control-mode poll with --repository-poll-secs, and one line for each Triton flag that is not ours.
Servers listen on 127.0.0.1 (and 127.0.0.2, loopback too) with free ports; clients are the real
tritonclient."""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from kserve_fixtures import ROOT, KServeServer, start_server, stop_server
from support.tiny_model import write_tiny_onnx
from tritonclient.utils import InferenceServerException

from resnet_serve.cli.commands.serve import configure
from resnet_serve.cli.triton_flags import ALIASES, NOT_SUPPORTED
from resnet_serve.formats.ready import Ready
from resnet_serve.server.config import ConfigError, load_config
from resnet_serve.server.launch import serving, wait_ready

DOCS = ROOT / "docs" / "server.md"
POLL_TIMEOUT_S = 30.0


def parse(*argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="resnet-serve serve")
    configure(parser)
    return vars(parser.parse_args(list(argv)))


def test_exit_timeout_secs_is_the_drain_bound() -> None:
    flags = parse("--model-repository", "repo", "--exit-timeout-secs", "3.5")
    assert load_config(flags, env={}).grace_period_s == 3.5


def test_log_verbose_above_zero_is_debug() -> None:
    assert parse("--log-verbose", "1")["log_level"] == "debug"
    assert parse("--log-verbose", "0")["log_level"] == "info"


def test_model_store_is_the_model_repository() -> None:
    assert load_config(parse("--model-store", "repo"), env={}).model_repository == "repo"


def test_each_endpoint_takes_its_own_address_and_host_stays_the_default() -> None:
    config = load_config(
        parse("--model-repository", "r", "--host", "10.0.0.1", "--http-address", "::1"), env={}
    )
    assert [config.listen_address(e) for e in ("grpc", "http", "metrics")] == ["10.0.0.1", "::1", "10.0.0.1"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ("--model-repository", "r", "--allow-grpc", "false", "--allow-http", "false"),
            "no endpoint would answer",
        ),
        (("--model", "m=x.onnx", "--model-control-mode", "poll"), "poll needs a model repository"),
        (("--model-repository", "r", "--repository-poll-secs", "0"), "repository_poll_secs must be > 0"),
    ],
)
def test_option_combinations_that_cannot_work_are_refused(argv: tuple[str, ...], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(parse(*argv), env={})


@pytest.mark.parametrize("flag", sorted(NOT_SUPPORTED))
def test_a_triton_flag_that_is_not_ours_gets_one_line(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse("--model-repository", "r", flag, "1")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"resnet-serve serve: error: Triton's {flag}: {NOT_SUPPORTED[flag]}"


def test_every_triton_flag_of_the_table_is_in_the_docs() -> None:
    text = DOCS.read_text()
    missing = [f for f in [*ALIASES, *NOT_SUPPORTED] if f"`{f}`" not in text]
    assert not missing, f"docs/server.md does not list {missing}"


# --------------------------------------------------------------------------------------- real servers


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


@contextmanager
def _serving_tiny(tmp_path: Path, *args: str) -> Iterator[tuple[str, Ready]]:
    """`serve` of the tiny model with `args`, yielding its "ready:" line and its ready file."""
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    log_path, ready_file = tmp_path / "server.log", tmp_path / "ready.json"
    base = ["--model", f"tiny={model}", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"]
    base += ["--ready-file", str(ready_file)]
    with (
        log_path.open("wb") as log,
        serving(*base, *args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT) as process,
    ):
        ready = wait_ready(process, ready_file, log=log_path)
        yield next(line for line in log_path.read_text().splitlines() if " ready: grpc=" in line), ready


def _port(ready: Ready, key: str) -> tuple[str, int]:
    endpoint = getattr(ready, key)
    assert endpoint is not None, (key, ready)
    return endpoint.host, endpoint.port


def _tiny_input(module: Any) -> Any:
    tensor = module.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    return tensor


@pytest.mark.slow
def test_each_endpoint_listens_on_its_own_address(tmp_path: Path) -> None:
    # 127.0.0.2 and 127.0.0.3 are loopback addresses too: each port must be there and not on --host.
    addresses = (
        "--grpc-address",
        "127.0.0.2",
        "--http-address",
        "127.0.0.3",
        "--metrics-address",
        "127.0.0.2",
    )
    with _serving_tiny(tmp_path, "--metrics-port", "0", *addresses) as (_, ready):
        ports = {key: _port(ready, key) for key in ("grpc", "http", "metrics")}
        assert {key: host for key, (host, _) in ports.items()} == {
            "grpc": "127.0.0.2",
            "http": "127.0.0.3",
            "metrics": "127.0.0.2",
        }
        for host, port in ports.values():
            assert _listening(host, port) and not _listening("127.0.0.1", port)
        grpc_client = tc.InferenceServerClient(f"127.0.0.2:{ports['grpc'][1]}")
        assert grpc_client.infer("tiny", [_tiny_input(tc)]).as_numpy("logits").shape == (1, 10)
        http_client = th.InferenceServerClient(f"127.0.0.3:{ports['http'][1]}")
        assert http_client.infer("tiny", [_tiny_input(th)]).as_numpy("logits").shape == (1, 10)


@pytest.mark.slow
def test_allow_flags_turn_endpoints_off(tmp_path: Path) -> None:
    with _serving_tiny(tmp_path, "--allow-grpc", "false", "--allow-metrics", "false") as (line, ready):
        assert "grpc=off" in line and "metrics=off" in line, line
        assert ready.grpc is None and ready.metrics is None, ready
        client = th.InferenceServerClient(f"127.0.0.1:{_port(ready, 'http')[1]}")
        assert client.infer("tiny", [_tiny_input(th)]).as_numpy("logits").shape == (1, 10)
    with _serving_tiny(tmp_path / "http-off", "--allow-http", "false", "--metrics-port", "0") as (
        line,
        ready,
    ):
        assert "http=off" in line and ready.http is None, line
        client = tc.InferenceServerClient(ready.grpc_target)
        assert client.infer("tiny", [_tiny_input(tc)]).as_numpy("logits").shape == (1, 10)


def _server_with_a_broken_model(tmp_path: Path, *extra: str) -> KServeServer:
    broken = tmp_path / "repository" / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a model")
    return start_server(tmp_path, "--exit-on-error", "false", *extra)


@pytest.mark.slow
@pytest.mark.parametrize(("strict", "ready"), [("true", False), ("false", True)])
def test_strict_readiness_decides_whether_a_failed_model_makes_the_server_unready(
    tmp_path: Path, strict: str, ready: bool
) -> None:
    server = _server_with_a_broken_model(tmp_path, "--strict-readiness", strict)
    try:
        assert tc.InferenceServerClient(server.url).is_server_ready() is ready
        assert th.InferenceServerClient(server.http_url).is_server_ready() is ready
        assert tc.InferenceServerClient(server.url).is_model_ready("tiny")
    finally:
        stop_server(server)


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {POLL_TIMEOUT_S} s: {what}")


@pytest.mark.slow
def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    client = tc.InferenceServerClient(server.url)
    try:
        x = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
        tensor = tc.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(x)
        # A new model directory is loaded.
        write_tiny_onnx(tmp_path / "staging" / "model.onnx", seed=11)
        (server.repository / "fresh" / "1").mkdir(parents=True)
        shutil.move(tmp_path / "staging" / "model.onnx", server.repository / "fresh" / "1" / "model.onnx")
        _wait(lambda: client.is_model_ready("fresh"), "the new model 'fresh' is ready")
        # A changed one is reloaded: a new version appears.
        before = client.infer("fresh", [tensor]).as_numpy("logits")
        write_tiny_onnx(tmp_path / "staging" / "model.onnx", seed=12)
        (server.repository / "fresh" / "2").mkdir()
        shutil.move(tmp_path / "staging" / "model.onnx", server.repository / "fresh" / "2" / "model.onnx")
        _wait(lambda: client.is_model_ready("fresh", "2"), "version 2 of 'fresh' is ready")
        assert not np.allclose(client.infer("fresh", [tensor]).as_numpy("logits"), before)
        # A removed one is unloaded.
        shutil.rmtree(server.repository / "fresh")
        _wait(lambda: not client.is_model_ready("fresh"), "'fresh' is unloaded")
        assert client.is_model_ready("tiny")
        # Clients may not load or unload in poll mode (Triton's rule).
        with pytest.raises(InferenceServerException) as info:
            client.load_model("tiny")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert info.value.message().startswith("explicit model load / unload is not allowed")
    finally:
        stop_server(server)
    assert re.search(r"model fresh appeared in the repository: loading it", server.log())
