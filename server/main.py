"""Run the gRPC inference server: our image API and KServe v2 on one port, with dynamic batching, health,
reflection and Prometheus metrics. Options come from a TOML file (--config), RESNET_SERVE_* environment
variables and flags, in increasing precedence; model options apply to every model unless the config file's
[models.NAME] table says otherwise (docs/server.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from resnet_serve.server.config import ConfigError, configure_parser, load_config
from resnet_serve.server.observability.logging import add_logging_arguments, configure_logging

log = logging.getLogger("resnet_serve.server")


def configure(parser: argparse.ArgumentParser) -> None:
    configure_parser(parser)
    add_logging_arguments(parser)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        config = load_config(args)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    from resnet_serve.server.app import (
        serve,  # imports onnxruntime and grpc: only once the config is known to be valid
    )

    return asyncio.run(serve(config))
