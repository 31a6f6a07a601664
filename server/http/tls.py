"""TLS for the HTTP/REST port: the gRPC port's certificate, key and client CA (`--grpc-use-ssl` and its
files), so configuring TLS protects both ports; a plaintext HTTP port beside a TLS gRPC port would serve the
same API unprotected. The files are the ones server/security/ has already checked at start-up."""

from __future__ import annotations

import ssl

from resnet_serve.server.security.tls import TLSFiles


def ssl_context(files: TLSFiles | None) -> ssl.SSLContext | None:
    """The server-side context for `files` (None: plaintext). Mutual TLS requires a client certificate
    that chains to `files.root`."""
    if files is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    if files.mutual:
        context.load_verify_locations(files.root)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
