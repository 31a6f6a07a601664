"""TLS for the HTTP/REST port: the gRPC port's certificate, key and client CA (`--grpc-use-ssl` and its
files), so configuring TLS protects both ports; a plaintext HTTP port beside a TLS gRPC port would serve the
same API unprotected. The context comes from the gRPC port's `ReloadableTLS` (server/security/tls.py), which
has checked the files at start-up, so SIGHUP reloads the certificate of both ports together: new HTTPS
connections get the new one, open keep-alive connections keep theirs."""

from __future__ import annotations

import ssl

from resnet_serve.server.security.tls import ReloadableTLS


def ssl_context(tls: ReloadableTLS | None) -> ssl.SSLContext | None:
    """The server-side context of `tls` (None: plaintext). Mutual TLS requires a client certificate that
    chains to the root CA file."""
    return None if tls is None else tls.ssl_context()
