"""Channel construction shared by the sync and asyncio clients: TLS, retries and message limits."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import grpc

DEFAULT_TARGET = "localhost:8001"
DEFAULT_TIMEOUT_S = 30.0
SERVICE = "resnetserve.v1.ImageClassifier"

PemSource: TypeAlias = bytes | str | os.PathLike[str]
ChannelOptions: TypeAlias = list[tuple[str, str | int]]


class UseDefault(enum.Enum):
    """Marks "the client's default timeout", which differs from an explicit None (no deadline)."""

    TOKEN = 0


USE_DEFAULT = UseDefault.TOKEN


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff on UNAVAILABLE only: the one status that means "nothing happened, try again".

    gRPC enforces it in the channel (service config), so it applies to every call on the channel and
    never retries once the server has started answering. gRPC caps `max_attempts` at 5.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def service_config(self) -> str:
        policy = {
            "maxAttempts": max(2, min(self.max_attempts, 5)),
            "initialBackoff": f"{self.initial_backoff_s:.3f}s",
            "maxBackoff": f"{self.max_backoff_s:.3f}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        return json.dumps({"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": policy}]})


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings. Empty `root_certs` means the system's trust store; a client cert and key enable mTLS.

    Each PEM may be given as bytes or as a path to a file. `server_name` overrides the name checked
    against the server's certificate (for certificates issued to a name other than the address dialled).
    """

    root_certs: PemSource | None = None
    client_cert: PemSource | None = None
    client_key: PemSource | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("a client certificate needs its private key, and a key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certs),
            private_key=_pem(self.client_key),
            certificate_chain=_pem(self.client_cert),
        )


Metadata: TypeAlias = tuple[tuple[str, str], ...]
TOKEN_ENV = "RESNET_SERVE_AUTH_TOKEN"


def auth_metadata(token: str | None) -> Metadata | None:
    """The call metadata that carries a bearer token (`authorization: Bearer <token>`), or None without one.

    Sent on every call of the image API; the server compares it in constant time and never logs it. Use TLS
    whenever the network between client and server is not trusted: over plaintext a token travels in clear.
    """
    if not token:
        return None
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("a bearer token cannot be empty or contain whitespace")
    return (("authorization", f"Bearer {token}"),)


def _pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def channel_options(
    retry: RetryPolicy | None, tls: TLSConfig | None, extra: Sequence[tuple[str, str | int]] = ()
) -> ChannelOptions:
    options: ChannelOptions = [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    if retry is not None:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", retry.service_config())]
    else:
        options.append(("grpc.enable_retries", 0))
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    options.extend(extra)
    return options
