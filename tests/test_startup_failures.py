"""Start-up fails fast: a missing or empty repository, a broken model or a port in use ends
`python -m resnet_serve serve` with a non-zero status within 5 s and ONE log line saying what and where;
`--exit-on-error false` serves what loads instead (unready), as Triton's flag does."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as tc
from support.tiny_model import write_tiny_onnx

from resnet_serve.server.launch import serve_command, serving, wait_ready

pytestmark = pytest.mark.slow
LIMIT_S = 5.0  # the bound on a failed start (the old server kept running instead)


def start_fails(*args: str) -> str:
    """Run the server; it must exit non-zero within LIMIT_S. Returns its one output line."""
    command = serve_command(
        "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", *args
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=LIMIT_S, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode != 0, lines
    assert len(lines) == 1, lines
    assert " ERROR " in lines[0] and "cannot start: " in lines[0]
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_missing_repository_is_fatal(tmp_path: Path) -> None:
    line = start_fails("--model-repository", str(tmp_path / "nowhere"))
    assert f"model repository {tmp_path / 'nowhere'} does not exist" in line


def test_an_empty_repository_is_fatal(tmp_path: Path) -> None:
    line = start_fails("--model-repository", str(tmp_path))
    assert f"model repository {tmp_path} holds no models" in line


def test_a_broken_model_is_fatal_and_named_with_its_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx model")
    line = start_fails("--model-repository", str(tmp_path))
    assert "failed to load 'broken'" in line and str(broken) in line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_broken_model_after_one_that_loaded_is_one_line_too(tmp_path: Path, workers: str) -> None:
    # What had loaded is released once: the worker processes' engine used to release it a second time and
    # print two tracebacks instead of the line.
    write_tiny_onnx(tmp_path / "a_good" / "1" / "model.onnx")
    broken = tmp_path / "z_broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx model")
    line = start_fails("--model-repository", str(tmp_path), "--workers", workers, "--log-level", "warning")
    assert "failed to load 'z_broken'" in line and str(broken) in line


def test_a_config_pbtxt_that_does_not_parse_is_fatal_and_names_its_line(tmp_path: Path) -> None:
    write_tiny_onnx(tmp_path / "tiny" / "1" / "model.onnx")
    (tmp_path / "tiny" / "config.pbtxt").write_text('name: "tiny"\nmax_batch_size: 8\ninstances: 2\n')
    line = start_fails("--model-repository", str(tmp_path))
    assert f"{tmp_path / 'tiny' / 'config.pbtxt'}:3:1 : " in line and '"instances"' in line


@pytest.mark.parametrize("option", ["--grpc-port", "--metrics-port"])
def test_a_port_in_use_is_fatal_before_any_model_loads(tmp_path: Path, taken_port: int, option: str) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    line = start_fails("--model", f"tiny={model}", option, str(taken_port))
    key = option.removeprefix("--").replace("-", "_")
    assert f"cannot listen on 127.0.0.1:{taken_port} ({key}): Address already in use" in line
    assert "tiny" not in line


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("option", ["--grpc-port", "--http-port"])
def test_a_port_another_server_shares_out_with_so_reuseport_is_in_use_too(
    tmp_path: Path, workers: str, option: str
) -> None:
    # Another resnet-serve (its workers bind with SO_REUSEPORT) on the port: joining it would split the
    # clients between two servers.
    write_tiny_onnx(tmp_path / "tiny" / "1" / "model.onnx")
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        line = start_fails("--model-repository", str(tmp_path), "--workers", workers, option, str(port))
    assert f"cannot listen on 127.0.0.1:{port} ({option[2:].replace('-', '_')})" in line, line
    assert "in use" in line


def test_two_endpoints_on_one_port_are_refused_before_anything_starts(tmp_path: Path) -> None:
    write_tiny_onnx(tmp_path / "tiny" / "1" / "model.onnx")
    command = serve_command(
        "--host", "127.0.0.1", "--model-repository", str(tmp_path), "--grpc-port", "46111", "--http-port",
        "46111", "--metrics-port", "0",
    )  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=LIMIT_S, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2, lines
    assert len(lines) == 1 and "grpc_port and http_port are both 46111" in lines[0], lines


def test_exit_on_error_false_serves_the_models_that_load_and_stays_unready(tmp_path: Path) -> None:
    write_tiny_onnx(tmp_path / "good" / "1" / "model.onnx")
    broken = tmp_path / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx model")
    log, ready_file = tmp_path / "server.log", tmp_path / "ready.json"
    args = ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "-1"]
    args += ["--ready-file", str(ready_file)]
    with (
        log.open("w") as out,
        serving(
            *args, "--model-repository", str(tmp_path), "--exit-on-error", "false", stdout=out, stderr=out
        ) as process,
    ):
        ready = wait_ready(process, ready_file, 60, log=log)
        assert {(m.name, m.state) for m in ready.models} >= {("good", "READY")}
        client = tc.InferenceServerClient(ready.grpc_target)
        assert client.is_model_ready("good") and not client.is_model_ready("broken")
        assert not client.is_server_ready()
        client.close()
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "failed to load 'broken'" in errors[0] and str(broken) in errors[0], errors


@pytest.mark.parametrize("workers", ["1", "2"])
def test_while_the_models_load_the_grpc_port_refuses_connections_rather_than_leave_them_unanswered(
    tmp_path: Path, workers: str
) -> None:
    # Triton's behaviour: its endpoints start once the models are loaded. A port that listened first
    # accepted a probe's connection and left it to its deadline, for as long as the load took.
    model = write_tiny_onnx(tmp_path / "slow-load.onnx", slow_layers=2500)  # seconds to load
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "server.log"
    args = (
        "--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", "-1", "--metrics-port", "-1",
        "--model", f"slow={model}", "--workers", workers,
    )  # fmt: skip
    with log.open("wb") as out, serving(*args, stdout=out, stderr=subprocess.STDOUT):
        refused = 0
        while "model slow version 1 ready" not in log.read_text():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
            except ConnectionRefusedError:
                refused += 1
            else:  # accepted: the model must have loaded (its line is logged before the port listens)
                assert "model slow version 1 ready" in log.read_text(), "accepted while loading"
            time.sleep(0.05)
        assert refused > 0, "the load ended before a connection was tried: not slow enough"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_ready_file_that_cannot_be_written_is_fatal_before_any_model_loads(
    tmp_path: Path, workers: str
) -> None:
    # It was found only once the server was ready: "ready:" logged, then the failure, and with workers a
    # stopped worker reported as restarted.
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    line = start_fails("--model", f"tiny={model}", "--workers", workers, "--ready-file", str(tmp_path))
    assert f"cannot write the ready file (--ready-file): {tmp_path}: it is a folder" in line
