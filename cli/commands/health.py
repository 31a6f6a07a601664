"""`resnet-serve health`: exit 0 when the server's grpc.health.v1 service says SERVING, 1 otherwise.

The images' HEALTHCHECK runs it; it prints one line (the status, or why the server could not be asked).
"""

from __future__ import annotations

import argparse
import os

from resnet_serve.cli.options import add_connection_arguments, positive_float, tls_from_args

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
    # Inside a container the probe runs beside the server, with its environment: the same gRPC port.
    parser.set_defaults(server=f"localhost:{os.environ.get('RESNET_SERVE_GRPC_PORT', '8001')}")


def run(args: argparse.Namespace) -> int:
    from resnet_serve.client.health import check
    from resnet_serve.client.results import ClassifyError

    try:
        status = check(args.server, args.service, args.timeout, tls_from_args(args))
    except ClassifyError as exc:
        print(f"{exc.code.name}: {exc.message}")
        return 1
    print(status)
    return 0 if status == "SERVING" else 1
