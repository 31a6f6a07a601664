"""Measuring one candidate: start the real server with its settings, load it with bench's own generator.

Each candidate gets a fresh server process (`python -m resnet_serve serve --config FILE`, the file tune
would write for it), so no state (warm caches, thread pools, a previous candidate's queue) leaks from one
measurement into the next. The load is a closed loop at the requested concurrency (capacity and the p99 the
SLO is checked against), then an open loop of Poisson arrivals at 70 % of that capacity (the p99 a service
running at a sane utilisation would see), both in bench's stability windows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from resnet_serve.bench.loadgen import Closed, Open, StepResult, Timing, run_step
from resnet_serve.bench.tune.candidates import Candidate
from resnet_serve.bench.tune.settings import server_toml
from resnet_serve.server.launch import NotReady, serve_command, stop, wait_ready

OPEN_LOOP_UTILISATION = 0.7


@dataclass
class Measurement:
    """What one candidate did; `failed` says why it could not be measured (the server did not start, ...)."""

    candidate: Candidate
    stage: str
    throughput: float = 0.0  # inferences per second, closed loop
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    stable: bool = False
    open_rate: float | None = None
    open_p99_ms: float | None = None
    open_kept_up: bool | None = None
    seconds: float = 0.0  # wall time spent on it, server start included
    failed: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidate"] = self.candidate.to_json()
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> Measurement:
        data = dict(data)
        data["candidate"] = Candidate.from_json(data["candidate"])
        return Measurement(**data)


class Measurer(Protocol):
    def measure(self, candidate: Candidate, stage: str) -> Measurement: ...


@dataclass(frozen=True)
class LoadSettings:
    """How each candidate is loaded: what is sent, how hard, and how long it is measured."""

    concurrency: int
    protocol: str = "kserve"  # kserve: tensors (no decode cost); image: encoded images
    images: str = "auto"
    timing: Timing = field(
        default_factory=lambda: Timing(warmup_s=1.0, window_s=1.5, max_s=12.0, tolerance=0.10, drain_s=5.0)
    )
    timeout_s: float = 30.0


class ServerMeasurer:
    """Measures candidates on real servers started on 127.0.0.1."""

    def __init__(self, name: str, load: LoadSettings, workdir: Path) -> None:
        self.name = name
        self.load = load
        self.workdir = workdir

    def measure(self, candidate: Candidate, stage: str) -> Measurement:
        began = time.monotonic()
        result = Measurement(candidate, stage)
        try:
            with _Server(self.name, candidate, self.workdir) as target:
                closed, opened = asyncio.run(self._load(target))
        except _ServerFailed as exc:
            result.failed = str(exc)
        else:
            result.throughput = closed.throughput
            result.p50_ms = closed.latency["p50"]
            result.p99_ms = closed.latency["p99"]
            result.errors = sum(closed.errors.values()) + (sum(opened.errors.values()) if opened else 0)
            result.stable = closed.stable
            if opened is not None:
                result.open_rate = opened.load.rate if isinstance(opened.load, Open) else None
                result.open_p99_ms = opened.latency["p99"]
                result.open_kept_up = opened.kept_up
        result.seconds = time.monotonic() - began
        return result

    async def _load(self, target: str) -> tuple[StepResult, StepResult | None]:
        from resnet_serve.bench.main import BenchOptions, make_sender

        options = BenchOptions(
            server=target,
            protocol=self.load.protocol,
            model=self.name,
            images=self.load.images,
            timeout=self.load.timeout_s,
        )
        sender, _, _ = await make_sender(options)
        try:
            closed = await run_step(sender, Closed(self.load.concurrency), self.load.timing)
            opened = None
            if closed.throughput > 0:
                rate = OPEN_LOOP_UTILISATION * closed.throughput / sender.batch_size
                opened = await run_step(sender, Open(rate), self.load.timing)
        finally:
            await sender.close()
        return closed, opened


class _ServerFailed(Exception):
    pass


class _Server:
    """A server process for one candidate (server/launch.py); the context manager yields its gRPC target once
    its ready file says it is ready."""

    def __init__(self, name: str, candidate: Candidate, workdir: Path) -> None:
        self.name = name
        self.candidate = candidate
        self.workdir = Path(tempfile.mkdtemp(prefix="candidate-", dir=workdir))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        server = {"host": "127.0.0.1", "grpc_port": 0, "metrics_port": -1}
        config, ready_file, log = (self.workdir / n for n in ("server.toml", "ready.json", "server.log"))
        config.write_text(server_toml(self.name, self.candidate, server))
        # Measured servers open no port beyond gRPC (no HTTP server when the build has one).
        env = {**os.environ, "RESNET_SERVE_HTTP_PORT": "-1", "PYTHONUNBUFFERED": "1"}
        env.pop("RESNET_SERVE_CONFIG", None)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                serve_command("--config", str(config), "--ready-file", str(ready_file)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            return wait_ready(self.proc, ready_file).grpc_target
        except NotReady as exc:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            self.__exit__()
            raise _ServerFailed(f"the server did not start: {lines[-1] if lines else exc}") from None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc, 30)
        shutil.rmtree(self.workdir, ignore_errors=True)
