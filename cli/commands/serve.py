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
from collections.abc import Callable
from typing import Any

from resnet_serve.server import config
from resnet_serve.server.observability.logging import LOG_FORMATS, LOG_LEVELS, configure_logging

log = logging.getLogger("resnet_serve.server")


def configure(parser: argparse.ArgumentParser) -> None:
    from resnet_serve.cli.triton_flags import add_triton_flags

    configure_parser(parser)
    add_logging_arguments(parser)
    add_triton_flags(parser)  # Triton's flags: aliases, and one line for each one not supported


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        server_config = config.load_config(vars(args))
    except config.ConfigError as exc:
        # A server reports through its log (JSON lines under --log-format json), as it does every other
        # start-up failure, rather than through the CLI's plain stderr line.
        log.error("invalid configuration: %s", exc)
        return 2
    from resnet_serve.server.app import serve  # onnxruntime and grpc: only once the config is valid

    return asyncio.run(serve(server_config))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add `--config`, `--model` and one flag per option; defaults and env names appear in `--help`."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML configuration file (env {config.ENV_PREFIX}CONFIG)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME=PATH",
        action="append",
        default=argparse.SUPPRESS,
        help="serve an .onnx file (version 1) or a directory of numbered versions under NAME; repeatable",
    )
    groups = {
        "server": parser.add_argument_group("server"),
        "model": parser.add_argument_group(
            "models (defaults for every model; a packaged config.json, then [models.NAME], override them)"
        ),
    }
    for opt in config.OPTIONS:
        default = opt.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        shown = str(shown).lower() if isinstance(shown, bool) else shown
        groups[opt.scope].add_argument(
            opt.flag,
            dest=opt.key,
            action="extend" if opt.repeat else "store",  # a repeat option's parse returns a tuple
            metavar=opt.metavar or None,
            type=_flag_type(opt),
            default=argparse.SUPPRESS,
            help=f"{opt.help} (default: {shown if shown != '' else 'none'}; env {opt.env})",
        )


def _flag_type(opt: config.Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return opt.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{opt.flag}: {exc}") from None

    return parse


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-format and --log-level, defaulting to $RESNET_SERVE_LOG_FORMAT / $RESNET_SERVE_LOG_LEVEL."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("RESNET_SERVE_LOG_FORMAT", "text"),
        help="text for people, json (one object per line, with request_id) for log collectors "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        default=os.environ.get("RESNET_SERVE_LOG_LEVEL", "info"),
        help="debug adds one access-log line per request; info logs nothing per request "
        "(default: %(default)s)",
    )
