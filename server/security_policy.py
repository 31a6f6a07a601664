"""Everything the server enforces about who may reach it, built once from the config at start-up and
reloaded on SIGHUP: the gRPC port's credentials (plaintext or TLS/mTLS), the access rules and their
interceptor, and the transport options. server/app.py makes three calls: `SecurityPolicy(config)`,
`add_grpc_port(server, address)` and, on SIGHUP, `reload()`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import grpc

from resnet_serve.server.security.access import AccessRules
from resnet_serve.server.security.files import SecurityError
from resnet_serve.server.security.interceptor import AccessInterceptor
from resnet_serve.server.security.model_control import load_unload_allowed
from resnet_serve.server.security.restrict import RestrictedGroups
from resnet_serve.server.security.tls import ReloadableTLS, TLSFiles
from resnet_serve.server.security.tokens import read_tokens
from resnet_serve.server.transport import grpc_options

if TYPE_CHECKING:
    from resnet_serve.server.config import ServerConfig
    from resnet_serve.server.observability.metrics import ServerMetrics

log = logging.getLogger(__name__)


def tls_files(config: ServerConfig) -> TLSFiles | None:
    if not config.grpc_use_ssl:
        return None
    return TLSFiles(
        cert=config.grpc_server_cert,
        key=config.grpc_server_key,
        root=config.grpc_root_cert,
        mutual=config.grpc_use_ssl_mutual,
    )


class SecurityPolicy:
    """Raises SecurityError (a UserError naming the option) when a file is missing or unusable. Refusals are
    counted in `metrics` (resnet_serve_access_refused_total) when given."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics | None = None) -> None:
        self.config = config
        files = tls_files(config)
        self.tls = ReloadableTLS(files) if files is not None else None
        self.rules = AccessRules(
            RestrictedGroups(config.grpc_restricted_protocol),
            read_tokens(config.auth_token_file, config.auth_token),
            metrics.access_refused if metrics is not None else None,
        )
        if metrics is not None:
            for protocol, group, reason in self.refusals():
                metrics.access_refused(protocol, group, reason, 0)

    def refusals(self) -> list[tuple[str, str, str]]:
        """The (protocol, group, reason) refusals this configuration can answer (their series start at 0)."""
        protocols = ["grpc", "http"] if self.config.http_port >= 0 else ["grpc"]
        kinds = [(g, "restricted") for r in self.config.grpc_restricted_protocol for g in sorted(r.groups)]
        if self.rules.tokens:
            kinds.append(("inference", "unauthenticated"))
        if not load_unload_allowed(self.config.model_control_mode):
            kinds.append(("model-repository", "model_control"))
        return [(p, group, reason) for p in protocols for group, reason in kinds]

    def interceptors(self) -> list[Any]:
        """The access interceptor, or none when nothing is restricted (no cost per request)."""
        return [AccessInterceptor(self.rules)] if self.rules else []

    def grpc_options(self) -> list[tuple[str, int]]:
        return grpc_options(self.config)

    def add_grpc_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind `address` with TLS when configured; the bound port (0 when gRPC could not bind)."""
        if self.tls is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.tls.credentials())

    def describe(self) -> str:
        """For the start-up line: how the port is protected, never with a secret."""
        tls = "off" if self.tls is None else ("mutual" if self.tls.files.mutual else "on")
        parts = [f"tls={tls}"]
        if self.rules.groups:
            restricted = sorted(g for r in self.config.grpc_restricted_protocol for g in r.groups)
            parts.append("restricted=" + ",".join(restricted))
        if self.rules.tokens:
            parts.append("image-api-tokens=on")
        return " ".join(parts)

    def reload(self, quiet: bool = False) -> bool:
        """Re-read the certificates and the token file (SIGHUP). What fails its checks is kept as it was and
        logged; True when everything reloaded. `quiet`: a worker process of `serve --workers`, whose engine
        checked the same files a moment before and said, once for the server, what came of it (debug)."""
        info, error = (log.debug, log.debug) if quiet else (log.info, log.error)
        ok = True
        if self.tls is not None:
            try:
                self.tls.reload()
                info("reloaded the TLS certificate from %s", self.tls.files.cert)
            except SecurityError as exc:
                ok = False
                error("TLS certificate not reloaded, the old one stays in use: %s", exc)
        if self.config.auth_token_file:
            try:
                self.rules.tokens = read_tokens(self.config.auth_token_file, self.config.auth_token)
                info("reloaded %d image API token(s)", len(self.rules.tokens))
            except SecurityError as exc:
                ok = False
                error("tokens not reloaded, the old ones stay in use: %s", exc)
        if self.tls is None and not self.config.auth_token_file:
            info("SIGHUP: no certificate or token file to reload")
        return ok
