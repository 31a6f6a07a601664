"""Start and stop `resnet-serve serve` as a subprocess: what the demo, tune, the benchmarks and tests share.

Standard library and formats/ only (no torch, no grpc), so that lab/gpu_check/ can import it on a machine
that lacks optional packages. `wait_ready` waits for the server's ready file (`--ready-file`,
formats/ready.py): the one machine-readable word that it is ready and on which ports, so nobody parses the
"ready:" log line. Callers that need more (a first Classify, KServe readiness of one model) check it after.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from resnet_serve.formats.ready import Ready, read_ready

READY_TIMEOUT_S = 120.0  # a ResNet-50 with warm-up at every batch size takes ~10 s on 2 cores


class NotReady(RuntimeError):
    """The server exited, or ran out of time, before it wrote its ready file; the message says which."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for servers that must be told their port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(*args: str) -> list[str]:
    """The argv of `resnet-serve serve ARGS...`, run with this interpreter (no installed script needed)."""
    return [sys.executable, "-m", "resnet_serve", "serve", *args]


def wait_ready(
    process: subprocess.Popen[Any],
    ready_file: str | os.PathLike[str],
    timeout_s: float = READY_TIMEOUT_S,
    log: str | os.PathLike[str] | None = None,
) -> Ready:
    """Wait until the server started as `process` with `--ready-file ready_file` writes it (with its own pid),
    and return it.
    Raises NotReady when the process exits first or `timeout_s` passes (the process is left running: the
    caller stops it), quoting the last lines of `log` (where its output goes) when given."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ready = read_ready(ready_file)
        except FileNotFoundError:
            pass
        else:
            if ready.pid == process.pid:  # not one an earlier server, killed, could not remove
                return ready
        code = process.poll()
        if code is not None:
            raise NotReady(f"the server exited with code {code} before it was ready{_tail(log)}")
        if time.monotonic() > deadline:
            raise NotReady(f"the server was not ready after {timeout_s:.0f} s{_tail(log)}")
        time.sleep(0.02)


def start(
    *args: str,
    ready_file: str | os.PathLike[str],
    log: str | os.PathLike[str],
    timeout_s: float = READY_TIMEOUT_S,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], Ready]:
    """Start `resnet-serve serve ARGS... --ready-file READY_FILE`, its stdout and stderr going to `log`,
    and wait until it is ready. `popen` goes to subprocess.Popen (cwd, env...).
    Raises NotReady, quoting the log's last lines, after stopping a server that exited or ran out of time,
    so a caller never leaves one behind."""
    with open(log, "wb") as out:
        process: subprocess.Popen[bytes] = subprocess.Popen(
            serve_command(*args, "--ready-file", os.fspath(ready_file)),
            stdout=out,
            stderr=subprocess.STDOUT,
            **popen,
        )
    try:
        return process, wait_ready(process, ready_file, timeout_s, log=log)
    except NotReady:
        stop(process)
        raise


def _tail(log: str | os.PathLike[str] | None, lines: int = 20) -> str:
    if log is None:
        return ""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            last = deque(f, maxlen=lines)
    except OSError:
        return ""
    return ":\n" + "".join(last) if last else " (no output)"


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
