"""The ready file (`--ready-file`, formats/ready.py): the server's one machine-readable word that it is ready
and on which ports, read by `server/launch.py`'s `wait_ready` in tune, lab/ and the tests."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as tc
from support.tiny_model import write_tiny_onnx

from resnet_serve.formats.ready import FORMAT, Endpoint, Ready, ReadyModel, read_ready, write_ready
from resnet_serve.server.launch import NotReady, serve_command, stop, wait_ready

FREE_PORTS = ("--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")


def _at(port: int, host: str = "127.0.0.1") -> Endpoint:
    return Endpoint(host, port)


def test_a_ready_file_reads_back_as_written(tmp_path: Path) -> None:
    ready = Ready(42, _at(9001), None, _at(9002, "0.0.0.0"), (ReadyModel("tiny", "1", "READY"),))
    write_ready(tmp_path / "ready.json", ready)
    assert read_ready(tmp_path / "ready.json") == ready
    data = json.loads((tmp_path / "ready.json").read_text())
    assert (
        data["format"] == FORMAT
        and data["http"] is None
        and data["grpc"] == {"host": "127.0.0.1", "port": 9001}
    )
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]  # no temporary file left beside it


def test_addresses_of_an_endpoint_listening_everywhere_are_on_loopback() -> None:
    assert Ready(1, _at(8001, "0.0.0.0"), None, None).grpc_target == "127.0.0.1:8001"
    assert Ready(1, None, _at(8000, "::"), None).http_url == "http://[::1]:8000"
    assert Ready(1, None, None, _at(8002, "10.0.0.5")).metrics_url == "http://10.0.0.5:8002/metrics"
    off = Ready(1, None, None, None)
    assert off.http_url is None and off.metrics_url is None and off.grpc_port is None
    with pytest.raises(ValueError, match="does not serve gRPC"):
        _ = off.grpc_target


GOOD = f'"format": "{FORMAT}", "pid": 1, "models": []'


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not JSON"),
        ('{"format": "other/1"}', "not a resnet-serve-ready/1 ready file (format 'other/1')"),
        ("[1, 2]", "format 'list'"),
        (f'{{{GOOD}, "grpc": null, "http": null}}', "without a valid 'metrics'"),
        (
            f'{{{GOOD}, "grpc": 8001, "http": null, "metrics": null}}',
            "grpc must be an object with host and port",
        ),
        (
            f'{{{GOOD}, "grpc": {{"host": "h", "port": "80"}}, "http": null, "metrics": null}}',
            "grpc: port must be an integer in 1..65535",
        ),
    ],
)
def test_anything_but_a_ready_file_is_refused_with_what_is_wrong(
    tmp_path: Path, text: str, needle: str
) -> None:
    (tmp_path / "ready.json").write_text(text)
    with pytest.raises(ValueError) as refused:
        read_ready(tmp_path / "ready.json")
    assert needle in str(refused.value)


def test_a_ready_file_left_by_another_process_is_not_taken_for_this_ones(tmp_path: Path) -> None:
    """A server killed with SIGKILL cannot remove its file: the next one's launcher must not read it."""
    stale = tmp_path / "ready.json"
    write_ready(stale, Ready(os.getpid(), _at(1), None, None))
    process = subprocess.Popen(["sleep", "5"])
    try:
        with pytest.raises(NotReady, match="not ready after 0 s"):
            wait_ready(process, stale, timeout_s=0.3)
    finally:
        stop(process)


@pytest.mark.slow
def test_the_server_writes_the_ports_it_listens_on_and_removes_the_file_at_exit(tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    ready_file, log = tmp_path / "run" / "ready.json", tmp_path / "server.log"
    command = serve_command(*FREE_PORTS, "--model", f"tiny={model}", "--ready-file", str(ready_file))
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        ready = wait_ready(process, ready_file, log=log)
        assert ready.pid == process.pid
        assert ready.models == (ReadyModel("tiny", "1", "READY"),)
        assert all(p is not None and p > 0 for p in (ready.grpc_port, ready.http_port, ready.metrics_port))
        client = tc.InferenceServerClient(ready.grpc_target)
        assert client.is_server_ready()
        client.close()
        assert ready.http_url is not None and ready.metrics_url is not None
        with urllib.request.urlopen(f"{ready.http_url}/v2/health/ready", timeout=10) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(ready.metrics_url, timeout=10) as answer:
            assert b"resnet_serve_requests_total" in answer.read()
    finally:
        code = stop(process)
    assert code == 0, log.read_text()
    assert not ready_file.exists(), "a stopped server left its ready file"


@pytest.mark.slow
def test_waiting_for_a_server_that_exits_says_so_with_its_last_lines(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    ready_file, log = tmp_path / "ready.json", tmp_path / "server.log"
    command = serve_command(*FREE_PORTS, "--model", f"broken={broken}", "--ready-file", str(ready_file))
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        with pytest.raises(NotReady, match="exited with code 1 before it was ready") as failed:
            wait_ready(process, ready_file, log=log)
    finally:
        stop(process)
    assert "cannot start" in str(failed.value) and "broken" in str(failed.value)
    assert not ready_file.exists()


@pytest.mark.slow
def test_a_ready_file_that_cannot_be_written_stops_the_server_with_one_error(tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "taken").mkdir()  # a folder where the file should go
    command = serve_command(*FREE_PORTS, "--model", f"tiny={model}", "--ready-file", str(tmp_path / "taken"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot write the ready file (--ready-file)" in errors[0], done.stderr
