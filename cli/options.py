"""Command-line options shared by several commands (reaching a server: `classify`, `bench`, `health`;
numbers and lists), and their checks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_serve.client.channel import DEFAULT_TARGET, TLSConfig, target_of
from resnet_serve.formats.environment import TOKEN_ENV
from resnet_serve.formats.errors import UserError


class OptionError(UserError):
    """An option that parses but cannot be used (a bad list of rates, an unreadable certificate, ...)."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=DEFAULT_TARGET,
        action=_ServerList,
        metavar="HOST:PORT",
        help="server address (default: %(default)s); several (repeat the flag or separate with commas) or "
        "dns:///NAME:PORT (a name resolving to several addresses) are balanced round-robin, health-checked",
    )
    group.add_argument("--tls", action="store_true", help="use TLS (implied by the certificate options)")
    group.add_argument("--ca-cert", metavar="PEM", help="root certificates to trust (default: the system's)")
    group.add_argument("--client-cert", metavar="PEM", help="client certificate chain for mutual TLS")
    group.add_argument("--client-key", metavar="PEM", help="the client certificate's private key")
    group.add_argument(
        "--server-name", metavar="NAME", help="name to check the server's certificate against (default: HOST)"
    )
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"send the bearer token in FILE to the image API (default: env {TOKEN_ENV}, if set)",
    )


def server_from_args(args: argparse.Namespace) -> str:
    """--server, checked before anything is dialled or loaded: HOST:PORT entries (a port in 1-65535; gRPC
    itself would dial 443 for none, and a wrapped port past 65535) or a gRPC URI (dns:///NAME:PORT, ...)."""
    try:
        target_of(args.server)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    return str(args.server)


def token_from_args(args: argparse.Namespace) -> str | None:
    """The bearer token of --token-file (its first line), else $RESNET_SERVE_AUTH_TOKEN, else None. Never a
    flag value: a token on the command line would show in `ps`."""
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text().split()
        except OSError as exc:
            raise OptionError(f"--token-file {args.token_file}: {exc.strerror or exc}") from None
        if not lines:
            raise OptionError(f"--token-file {args.token_file}: holds no token")
        return lines[0]
    return os.environ.get(TOKEN_ENV) or None


class _ServerList(argparse.Action):
    """--server given several times: the servers joined with commas (client.channel.target_of's list)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, "_servers_given", [])
        given.append(str(values))
        namespace._servers_given = given
        setattr(namespace, self.dest, ",".join(given))


_TLS_OPTIONS = {"root_certs": "--ca-cert", "client_cert": "--client-cert", "client_key": "--client-key"}


def tls_from_args(args: argparse.Namespace) -> TLSConfig | None:
    """The TLS settings the options ask for, or None for a plaintext channel."""
    wanted = args.tls or args.ca_cert or args.client_cert or args.client_key or args.server_name
    if not wanted:
        return None
    tls = TLSConfig(
        root_certs=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        server_name=args.server_name,
    )
    try:  # the files checked before anything is dialled: gRPC's own failure is C-core log lines
        tls.check(_TLS_OPTIONS)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    return tls


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def positive_ints(text: str) -> list[int]:
    """One argument of a list option: "8", or comma-separated "8,16" (the spelling of serve and config.json
    lists); with nargs="+" and action=Flatten, "8 16" and "8,16" both give [8, 16]."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected whole numbers such as 8,16 or 8 16, got {text!r}")
    return [positive_int(p) for p in parts]


class Flatten(argparse.Action):
    """nargs="+" of a list type (positive_ints): the lists joined into one."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        flat = [item for value in values or () for item in (value if isinstance(value, list) else [value])]
        setattr(namespace, self.dest, flat)
