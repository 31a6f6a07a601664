"""`classify`, `bench` and `health` pointed at a port that answers HTTP/1 (the server's HTTP/REST port 8000 or
its metrics port 8002) say so in their one line, and name the gRPC port, instead of gRPC's bare "Failed
parsing HTTP/2 (Expected SETTINGS frame ..., got frame type 80)"."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet_serve.cli.main import main

HINT = "that address answered HTTP/1, not gRPC: the gRPC port is 8001 by default"
PORTS = "(HTTP/REST is 8000, metrics 8002)"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http1() -> Iterator[str]:
    """HOST:PORT of a plain HTTP/1 server on the loopback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "command",
    [
        ["classify", "x.png"],
        ["bench", "--concurrency", "1"],
        ["bench", "--protocol", "kserve", "--model", "m", "--concurrency", "1"],
    ],
    ids=["classify", "bench", "bench-kserve"],
)
def test_an_http1_port_is_named_as_such_in_the_one_line_error(
    command: list[str], http1: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path)] if command[0] == "bench" else []
    assert main([*command, *out, "--server", http1]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"resnet-serve {command[0]}: error: "), err
    assert f"{HINT} {PORTS}" in err and "Failed parsing HTTP/2" in err, err


def test_health_names_an_http1_port_as_such(http1: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--server", http1]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"UNAVAILABLE: health check of {http1}: {HINT} {PORTS} ("), out
    assert len(out.splitlines()) == 1, out
