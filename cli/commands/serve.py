"""Run the gRPC inference server: our image API and KServe v2 on one port, with dynamic batching, health,
reflection and Prometheus metrics. Options come from a TOML file (--config), RESNET_SERVE_* environment
variables and flags, in increasing precedence; model options apply to every model unless the config file's
[models.NAME] table says otherwise (docs/server.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from resnet_serve.cli.flags import add_flags
from resnet_serve.server import config
from resnet_serve.server.observability.logging import configure_logging, quiet_grpc_core

log = logging.getLogger("resnet_serve.server")


def configure(parser: argparse.ArgumentParser) -> None:
    from resnet_serve.cli.triton_flags import add_triton_flags

    configure_parser(parser)
    add_logging_arguments(parser)
    add_triton_flags(parser)  # Triton's flags: aliases, and one line for each one not supported


def run(args: argparse.Namespace, other_options: tuple[config.Option, ...] = ()) -> int:
    """Serve; `other_options`: the calling command's own settings (the container entrypoint's), whose
    variables are not misspelt server settings."""
    configure_logging(args.log_level, args.log_format)
    try:
        server_config = config.load_config(vars(args))
    except config.ConfigError as exc:
        # A server reports through its log (JSON lines under --log-format json), as it does every other
        # start-up failure, rather than through the CLI's plain stderr line.
        log.error("invalid configuration: %s", exc)
        return 2
    for line in config.unknown_env(os.environ, other_options):
        log.warning("%s", line)
    quiet_grpc_core()  # before grpc is imported
    workers = config.worker_count(server_config)
    if workers > 1:  # an engine process and the worker processes (server/processes/)
        from resnet_serve.server.processes.supervisor import serve_workers

        return asyncio.run(serve_workers(server_config, workers, args.log_level, args.log_format))
    from resnet_serve.server.app import serve  # onnxruntime and grpc: only once the config is valid

    return asyncio.run(serve(server_config))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add `--config`, `--model` and one flag per option, all derived from the settings' declaration
    (server/config/settings.py); defaults and env names appear in `--help`."""
    add_flags(parser, config.INPUT_OPTIONS)
    add_flags(parser.add_argument_group("server"), config.SERVER_OPTIONS)
    group = parser.add_argument_group(
        "models (defaults for every model; a packaged config.json, then [models.NAME], override them)"
    )
    add_flags(group, config.MODEL_OPTIONS)


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-format and --log-level, defaulting to $RESNET_SERVE_LOG_FORMAT / $RESNET_SERVE_LOG_LEVEL."""
    add_flags(parser, config.LOG_OPTIONS, env=os.environ)
