"""Start and stop `resnet-serve serve` as a subprocess: what the demo, the benchmarks and the tests share.

Standard library only (no torch, no grpc), so that lab/gpu_check/ can import it on a machine that lacks
optional packages. Readiness is left to each caller: they wait in different ways (health service, KServe
readiness, the "ready:" log line, a first Classify) because each checks something different.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for servers that must be told their port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(*args: str) -> list[str]:
    """The argv of `resnet-serve serve ARGS...`, run with this interpreter (no installed script needed)."""
    return [sys.executable, "-m", "resnet_serve", "serve", *args]


def stop(process: subprocess.Popen[Any], timeout_s: float = 20.0) -> int:
    """SIGTERM (the server drains, then exits), then SIGKILL if it is still running after `timeout_s`.
    Returns the exit code; reaps the process either way so no zombie is left behind."""
    process.terminate()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@contextmanager
def serving(*args: str, stop_timeout_s: float = 20.0, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`resnet-serve serve ARGS...` running for the duration of the block, stopped with `stop()` on exit;
    `popen` goes to subprocess.Popen (stdout, cwd, env...). The exit code is `process.returncode` after."""
    process: subprocess.Popen[bytes] = subprocess.Popen(serve_command(*args), **popen)
    try:
        yield process
    finally:
        stop(process, stop_timeout_s)
