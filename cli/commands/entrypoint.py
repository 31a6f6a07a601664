"""`resnet-serve entrypoint`: what the container images run. It takes every `resnet-serve serve` option and
serves in this same process (so SIGTERM from Docker or Kubernetes reaches the server and starts its drain).

With --build-engines (the GPU image sets RESNET_SERVE_BUILD_ENGINES=true) it first compiles a TensorRT
engine of each model's latest version in --model-repository on this node's GPU, into --engine-cache (a
volume: engines and TensorRT's timing cache survive restarts, one set per TensorRT version and GPU
architecture), then serves that derived repository with the TensorRT backend. Engines already in the cache
for this node are reused; each build runs `resnet-serve build-engine` in a child process.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

from pydantic import BaseModel

from resnet_serve.cli.commands import serve
from resnet_serve.cli.flags import add_flags
from resnet_serve.formats.sidecar import ENGINE_PRECISIONS
from resnet_serve.server import config
from resnet_serve.server.config.options import Int, one_of, option, options_of
from resnet_serve.server.observability.logging import configure_logging

log = logging.getLogger("resnet_serve.entrypoint")


class _Terminated(Exception):
    """SIGTERM while engines were being built: stop the build and exit as a signalled process would."""


class EngineSettings(BaseModel):
    """The entrypoint's own settings, declared as the server's are (flags and env derived from them)."""

    build_engines: bool = option(
        False, "BOOL", "build (or reuse) engines for --model-repository and serve them"
    )
    engine_cache: str = option("/engines", "DIR", "writable volume for engines and the timing cache")
    engine_precision: Annotated[str, one_of(ENGINE_PRECISIONS)] = option(
        "auto", "PRECISION", "auto: each ONNX's own precision; fp16 converts FP32 models"
    )
    engine_device: Int = option(0, "N", "CUDA device to build on", ge=0)


def configure(parser: argparse.ArgumentParser) -> None:
    serve.configure(parser)
    group = parser.add_argument_group("TensorRT engines built on this node before serving")
    add_flags(group, options_of(EngineSettings, ""), env=os.environ)


def run(args: argparse.Namespace) -> int:
    if not args.build_engines:
        return serve.run(args, options_of(EngineSettings, ""))
    configure_logging(args.log_level, args.log_format)
    try:
        repository = config.load_config(vars(args)).model_repository
    except config.ConfigError:
        return serve.run(args, options_of(EngineSettings, ""))  # which logs the configuration's problem
    if not repository:
        log.error("--build-engines needs --model-repository (the models to build engines for)")
        return 2
    from resnet_serve.formats.errors import UserError

    try:
        args.model_repository = str(_build(Path(repository), args))
    except _Terminated:
        log.info("received SIGTERM while building engines: stopped")
        return 128 + signal.SIGTERM
    # No TensorRT, no GPU, a bad repository, a read-only engine cache, a failed build: one logged line.
    except (UserError, OSError) as exc:
        log.error("cannot build TensorRT engines: %s", exc)
        return 1
    return serve.run(args, options_of(EngineSettings, ""))


def _build(repository: Path, args: argparse.Namespace) -> Path:
    from resnet_serve.export import engine_cache
    from resnet_serve.export.engine import EngineError

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    # PID 1 in a container ignores SIGTERM unless it handles it: without this, `docker stop` during a build
    # would wait out its grace period and SIGKILL. subprocess.run kills the child build on the way out.
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        node = engine_cache.node_gpu(args.engine_device)
        log.info(
            "building TensorRT engines for %s on %s (TensorRT %s) into %s",
            repository,
            node.gpu_name,
            node.tensorrt_version,
            args.engine_cache,
        )

        def build(job: engine_cache.EngineJob) -> None:
            log.info("building %s version %d (%s)", job.model, job.version, job.precision)
            command = [
                sys.executable, "-m", "resnet_serve", "build-engine", str(job.onnx),
                "--out", str(job.engine), "--precision", job.precision,
                "--min-batch", str(job.profile.min), "--opt-batch", str(job.profile.opt),
                "--max-batch", str(job.profile.max), "--timing-cache", str(job.timing_cache),
                "--device", str(args.engine_device),
            ]  # fmt: skip
            if subprocess.run(command, check=False).returncode != 0:
                raise EngineError(
                    f"building the engine of {job.model} version {job.version} failed (its log is above)"
                )

        root, built = engine_cache.prepare(
            repository, Path(args.engine_cache), node, build, args.engine_precision
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    reused = "" if built else " (all reused from the cache)"
    log.info("serving engines from %s%s", root, reused)
    return root
