"""`resnet-serve health`: exit 0 when the server's grpc.health.v1 service says SERVING, 1 otherwise, 2 for bad
options (a --server that is not HOST:PORT).

The images' HEALTHCHECK runs it; it prints one line (the status, or why the server could not be asked).
"""

from __future__ import annotations

import argparse
import os

from resnet_serve.cli.options import (
    OptionError,
    add_connection_arguments,
    positive_float,
    server_from_args,
    tls_from_args,
)
from resnet_serve.formats.environment import env_of

PORT_ENV = env_of("grpc_port")  # the server's option (server/config/settings.py)
EXAMPLES = """examples:
  resnet-serve health                                   # localhost, port $RESNET_SERVE_GRPC_PORT or 8001
  resnet-serve health --server gpu-box:8001 --service resnetserve.v1.ImageClassifier --timeout 1"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument(
        "--service", default="", help="health service name to ask about (default: the whole server)"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=3.0, metavar="S", help="seconds to wait (default: 3)"
    )
    add_connection_arguments(parser)
    # Inside a container the probe runs beside the server, with its environment: the same gRPC port, read
    # through the server's declaration of it (which needs the `serve` extra, as the server does).
    try:
        from resnet_serve.server.config import ConfigError, from_env
    except ModuleNotFoundError:
        if PORT_ENV in os.environ:
            parser.error(f"{PORT_ENV} is set, but reading it needs the serve extra: pass --server HOST:PORT")
        return
    try:
        parser.set_defaults(server=f"localhost:{from_env('grpc_port')}")
    except ConfigError as exc:
        parser.error(str(exc))


def run(args: argparse.Namespace) -> int:
    from resnet_serve.client.health import check
    from resnet_serve.client.results import ClassifyError

    server = server_from_args(args)
    try:
        status = check(server, args.service, args.timeout, tls_from_args(args))
    except ClassifyError as exc:
        print(f"{exc.code.name}: {exc.message}")
        return 1
    except ValueError as exc:  # e.g. a client certificate without its key
        raise OptionError(str(exc)) from None
    print(status)
    return 0 if status == "SERVING" else 1
