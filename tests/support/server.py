"""A real `resnet-serve serve` process on free loopback ports, found through its ready file."""

from __future__ import annotations

import io
import re
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from resnet_serve.formats.ready import Ready
from resnet_serve.server.launch import start, stop

REPO = Path(__file__).resolve().parents[2]
# gRPC core's own log lines ("E1207 12:00:00.000000 123 file.cc:186] ..."), which no server output may hold.
GRPC_CORE_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    ready: Ready
    log_path: Path

    @property
    def target(self) -> str:
        return self.ready.grpc_target

    @property
    def metrics_port(self) -> int | None:
        return self.ready.metrics_port

    @property
    def log(self) -> list[str]:
        """What the server has logged so far, line by line."""
        return self.log_path.read_text(errors="replace").splitlines(keepends=True)


def start_server(*args: str, timeout_s: float = 30.0) -> ServerProcess:
    """Start `resnet-serve serve ARGS` on 127.0.0.1 with all three ports free (0); wait until it is ready."""
    work = Path(tempfile.mkdtemp(prefix="resnet-serve-test-"))
    log_path = work / "server.log"
    ports = ("--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")
    proc, ready = start(
        *ports, *args, ready_file=work / "ready.json", log=log_path, timeout_s=timeout_s, cwd=REPO
    )
    return ServerProcess(proc, ready, log_path)


def stop_server(server: ServerProcess) -> int:
    """SIGTERM, the drain, the exit code (killed after 30 s)."""
    return stop(server.proc, 30)


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()
