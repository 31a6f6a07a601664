"""Channel construction shared by the sync and asyncio clients: TLS, retries, message limits and
client-side load balancing over several servers (gRPC's own `round_robin` policy, health-checked)."""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import grpc

from resnet_serve.formats.tlsfiles import (
    SecurityError,
    check_ca_bundle,
    check_key_pair,
    check_pem,
    read_small_file,
)

DEFAULT_TARGET = "localhost:8001"
DEFAULT_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 2.0  # the call that asks a channel in TRANSIENT_FAILURE why (it fails at once)
SERVICE = "resnetserve.v1.ImageClassifier"
KSERVE_SERVICE = "inference.GRPCInferenceService"
# Client-side health checking watches this grpc.health.v1 service name on every address; "" is the server's
# overall health, which server/app.py turns NOT_SERVING first thing on SIGTERM, so a draining replica leaves
# the round-robin rotation before it stops accepting requests. A server without the health service
# (UNIMPLEMENTED) counts as healthy (gRFC A17), so the setting is safe against any server.
HEALTH_SERVICE = ""

_URL_SCHEMES = ("http", "https", "grpc", "grpcs")  # typed out of habit; gRPC targets take none of them
# gRPC's own target URIs, passed through as given (a HOST:PORT is checked before it is dialled).
_URI_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:", "google-c2p:")

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
        return json.dumps({"methodConfig": [self.method_config()]})

    def method_config(self) -> dict[str, object]:
        """The service config's methodConfig entry: both APIs, retried on UNAVAILABLE with backoff."""
        policy = {
            "maxAttempts": max(2, min(self.max_attempts, 5)),
            "initialBackoff": f"{self.initial_backoff_s:.3f}s",
            "maxBackoff": f"{self.max_backoff_s:.3f}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        return {"name": [{"service": SERVICE}, {"service": KSERVE_SERVICE}], "retryPolicy": policy}


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
        root, cert, key = self._pems()
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)

    def check(self, names: Mapping[str, str] | None = None) -> None:
        """Check the PEM files before anything is dialled, as `credentials` does; a pipe (`<(cat ca.pem)`),
        which can be read once, is left for `credentials` to read and check. ValueError names the first
        problem: the field (or `names[field]`, e.g. "--ca-cert") and the path."""
        self._pems(names, pipes=False)

    def _pems(
        self, names: Mapping[str, str] | None = None, *, pipes: bool = True
    ) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The root certificates, client certificate chain and client key, read and checked before gRPC sees
        them (it would log C-core lines and fail every handshake): each a PEM of its kind, the roots loadable,
        the key unencrypted and matching its certificate (for files: bytes are checked for PEM only)."""
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("a client certificate needs its private key, and a key its certificate")
        given = {
            field: (
                (names or {}).get(field, field),
                "(bytes)" if isinstance(source, bytes) else os.fspath(source),
            )
            for field, source in (
                ("root_certs", self.root_certs),
                ("client_cert", self.client_cert),
                ("client_key", self.client_key),
            )
            if source is not None
        }
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            root = _read_pem(self.root_certs, given.get("root_certs"), pipes)
            cert = _read_pem(self.client_cert, given.get("client_cert"), pipes)
            key = _read_pem(self.client_key, given.get("client_key"), pipes)
            if root is not None:
                check_ca_bundle(context, root, *given["root_certs"])
            if cert is not None:
                check_pem(cert, b"CERTIFICATE-----", *given["client_cert"], "certificate")
            if key is not None:
                check_pem(key, b"PRIVATE KEY-----", *given["client_key"], "private key")
            if _regular_file(self.client_cert) and _regular_file(self.client_key):
                check_key_pair(context, given["client_cert"], given["client_key"])
        except SecurityError as exc:
            raise ValueError(str(exc)) from None
        return root, cert, key


Metadata: TypeAlias = tuple[tuple[str, str], ...]


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


def _read_pem(source: PemSource | None, given: tuple[str, str] | None, pipes: bool) -> bytes | None:
    """The bytes of a PEM source (None for none, and for a pipe unless `pipes`)."""
    if source is None or isinstance(source, bytes) or given is None:
        return source if isinstance(source, bytes) else None
    path = os.fspath(source)
    if not pipes and os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        return None
    return read_small_file(path, given[0], regular=False)[0]


def _regular_file(source: PemSource | None) -> bool:
    return source is not None and not isinstance(source, bytes) and os.path.isfile(source)


def channel_options(
    retry: RetryPolicy | None, tls: TLSConfig | None, extra: Sequence[tuple[str, str | int]] = ()
) -> ChannelOptions:
    options: ChannelOptions = [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    options += [
        ("grpc.enable_retries", 0 if retry is None else 1),
        ("grpc.service_config", service_config(retry)),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    options.extend(extra)
    return options


def service_config(retry: RetryPolicy | None, *, health_checked: bool = False) -> str:
    """The channel's service config: round-robin over every address the target resolves to, plus the retry
    policy when there is one; with `health_checked`, each address is watched through grpc.health.v1 and
    leaves the rotation while it is not SERVING.

    With one address round_robin behaves as pick_first; with several (a list of servers, or a DNS name such
    as a Kubernetes headless Service) every request goes to the next healthy one, so one client spreads its
    load instead of pinning one HTTP/2 connection to one replica. Health checking is for balanced targets
    only: against a lone server it would hide the server's own answer (a model that is not ready) behind
    a client-side UNAVAILABLE, and there is no other replica to fail over to.
    """
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_checked:
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    if retry is not None:
        config["methodConfig"] = [retry.method_config()]
    return json.dumps(config)


def balanced(target: str) -> bool:
    """Whether a target (from `target_of`) names several servers: a list, or a `dns:` name to balance over."""
    return target.startswith(("ipv4:", "ipv6:", "dns:"))


def balance(servers: str | Sequence[str], options: ChannelOptions) -> tuple[str, ChannelOptions]:
    """The gRPC target for `servers` (`target_of`) and `options` (from `channel_options`) for it: when the
    target is balanced, its service config also health-checks every address."""
    target = target_of(servers)
    if not balanced(target):
        return target, options
    checked: ChannelOptions = []
    for key, value in options:
        if key == "grpc.service_config":
            config = json.loads(str(value))
            config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
            value = json.dumps(config)
        checked.append((key, value))
    return target, checked


def target_of(servers: str | Sequence[str]) -> str:
    """The gRPC target for one server, several servers, or a name that resolves to several addresses.

    One ``host:port`` or a URI (``dns:///name:8001``, ``ipv4:...``, ``unix:...``) is used as given: gRPC
    resolves it, and re-resolves a DNS name when a connection drops. Several servers (a comma-separated string
    or a sequence) become one ``ipv4:`` (or ``ipv6:``) target listing every address; host names among them
    are resolved once, here. Raises ValueError for an entry that is not ``HOST:PORT`` or does not resolve.
    """
    entries = [s.strip() for s in (servers.split(",") if isinstance(servers, str) else servers)]
    entries = [e for e in entries if e]
    if not entries:
        raise ValueError("no server given: expected HOST:PORT, a comma-separated list or dns:///NAME:PORT")
    for entry in entries:
        scheme = entry.partition("://")[0].lower()
        if "://" in entry and scheme in _URL_SCHEMES:
            raise ValueError(
                f"{entry}: give the gRPC port as HOST:PORT, not a URL ({scheme}:// is for the HTTP API; "
                "TLS is --tls)"
            )
    if len(entries) == 1:
        if not entries[0].startswith(_URI_SCHEMES):
            # checked, not split: gRPC would dial port 443 for a missing port, and port % 65536 past 65535
            _split_host_port(entries[0])
        return entries[0]
    v4: list[str] = []
    v6: list[str] = []
    for entry in entries:
        host, port = _split_host_port(entry)
        for address in _addresses(host, port, entry):
            if address.version == 4:
                v4.append(f"{address}:{port}")
            else:
                v6.append(f"[{address}]:{port}")
    if v4 and v6:
        raise ValueError(f"{', '.join(entries)}: mixes IPv4 and IPv6 addresses; gRPC balances one family")
    return ("ipv4:" + ",".join(dict.fromkeys(v4))) if v4 else ("ipv6:" + ",".join(dict.fromkeys(v6)))


# What gRPC says when a connection fails (the `details` of a fail-fast call on a channel in
# TRANSIENT_FAILURE), and what it means for someone who typed a server address.
_CONNECT_FAILURES: tuple[tuple[str, bool | None, str], ...] = (
    ("Connection refused", None, "connection refused: nothing listens there (is the server running, "
     "on this port?)"),
    ("WRONG_VERSION_NUMBER", True, "TLS handshake failed: the server does not speak TLS on this port "
     "(drop --tls)"),
    ("CERTIFICATE_VERIFY_FAILED", True, "TLS handshake failed: the server's certificate is not signed by the "
     "trusted CA (--ca-cert)"),
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", True, "TLS handshake failed: the server wants a client certificate "
     "(--client-cert, --client-key)"),
    ("andshake failed", True, "TLS handshake failed"),
    ("Socket closed", False, "the server closed the connection while it was being set up: it may expect TLS "
     "(--tls)"),
    ("Connection reset", False, "the server reset the connection while it was being set up: it may "
     "expect TLS (--tls)"),
    ("Failed parsing HTTP/2", None, "that address answered HTTP/1, not gRPC: the gRPC port is 8001 by "
     "default (HTTP/REST is 8000, metrics 8002)"),
    ("errors resolving", None, "cannot resolve the host name"),
    ("Deadline Exceeded", None, "no answer (a firewall dropping packets, or the wrong host?)"),
)  # fmt: skip


def connect_failure(target: str, detail: str, tls: bool) -> str:
    """One line saying why no connection to `target` could be made, from gRPC's `detail` (the status
    details of a call that failed for want of a connection), with gRPC's own words after the reason."""
    detail = " ".join(detail.split())
    reason = connect_reason(detail, tls)
    return (
        f"cannot connect to {target}: {reason} ({detail})"
        if reason
        else f"cannot connect to {target}: {detail}"
    )


def connect_reason(detail: str, tls: bool) -> str | None:
    """What gRPC's `detail` of a failed connection means for someone who typed a server address (a port that
    answers HTTP/1, a TLS mismatch, ...), or None when it is none of the known failures."""
    for marker, with_tls, reason in _CONNECT_FAILURES:
        if marker in detail and with_tls in (None, tls):
            return reason
    return None


def _split_host_port(entry: str) -> tuple[str, int]:
    if "://" in entry or entry.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        raise ValueError(f"{entry}: a URI target cannot be part of a list; give HOST:PORT entries")
    host, sep, port = entry.rpartition(":")
    if (
        not sep or not port or (host.endswith(":") and not host.startswith("["))
    ):  # "::1": IPv6 wants [::1]:PORT
        problem = "no port (the server's gRPC port is 8001 by default)"
    elif not host:
        problem = "no host"
    elif not (port.isascii() and port.isdigit()):
        problem = f"the port {port!r} is not a number"
    elif not 0 < int(port) < 65536:
        problem = f"the port {int(port)} is not in 1-65535"
    else:
        return host.removeprefix("[").removesuffix("]"), int(port)
    raise ValueError(f"{entry}: expected HOST:PORT; {problem}")


def _addresses(host: str, port: int, entry: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"{entry}: cannot resolve {host} ({exc.strerror})") from None
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
    found = [ipaddress.ip_address(str(info[4][0])) for info in infos]
    v4: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [a for a in found if a.version == 4]
    return v4 or found  # a name with both families (localhost) is balanced over its IPv4 addresses
