"""TLS and mutual TLS for the server: the certificate files checked before the server starts, gRPC
credentials that pick up new certificates on reload without dropping a connection, and the same material
as an `ssl.SSLContext` for an HTTP front end.

Options are Triton's: `--grpc-use-ssl`, `--grpc-server-cert`, `--grpc-server-key`, `--grpc-root-cert`,
`--grpc-use-ssl-mutual`. The files are checked with the standard library's `ssl` (a key that does not match
its certificate, a file that holds no PEM certificate), so a mistake stops the server with a message naming
the option, instead of gRPC failing every handshake later.

Reload: `grpc.dynamic_ssl_server_credentials` asks its fetcher for a new certificate configuration at every
new handshake; `ReloadableTLS.reload()` (SIGHUP) reads and checks the files and hands the fetcher the new
configuration once. The HTTP port's `ssl.SSLContext` (`ReloadableTLS.ssl_context()`) follows the same
reload: its SNI callback, which OpenSSL runs at every handshake (with or without SNI), switches the handshake
to the context the last reload built. Connections already open keep the certificate they were made with;
new ones get the new one. A reload that fails the checks changes neither port: the old certificate stays in
use, and the caller logs why.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field

import grpc

from resnet_serve.formats.tlsfiles import check_ca_bundle, check_key_pair, check_pem
from resnet_serve.server.security.files import SecurityError, read_secret_file


@dataclass(frozen=True)
class TLSFiles:
    """Where the certificate, its key and the client CA live, and whether clients must present one."""

    cert: str
    key: str
    root: str = ""  # the CA bundle client certificates must chain to (needed for mutual TLS)
    mutual: bool = False


@dataclass(frozen=True)
class TLSMaterial:
    """The checked contents of the TLS files."""

    cert_chain: bytes
    key: bytes = field(repr=False)
    root: bytes | None

    def grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert_chain)], self.root)


def read_tls(files: TLSFiles) -> TLSMaterial:
    """Read and check the files; SecurityError names the option and path of the first problem."""
    cert = read_secret_file(files.cert, "--grpc-server-cert")
    key = read_secret_file(files.key, "--grpc-server-key", private=True)
    check_pem(cert, b"CERTIFICATE-----", "--grpc-server-cert", files.cert, "certificate")
    check_pem(key, b"PRIVATE KEY-----", "--grpc-server-key", files.key, "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    check_key_pair(context, ("--grpc-server-cert", files.cert), ("--grpc-server-key", files.key))
    root = None
    if files.root:
        root = read_secret_file(files.root, "--grpc-root-cert")
        check_ca_bundle(context, root, "--grpc-root-cert", files.root)
    return TLSMaterial(cert, key, root)


def _ssl_context(files: TLSFiles) -> ssl.SSLContext:
    """An `ssl.SSLContext` (TLS 1.2 or later) from files `read_tls` has checked; SecurityError if they changed
    in between and no longer load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key, password=b"")
        if files.root:
            context.load_verify_locations(files.root)
    except (ssl.SSLError, OSError) as exc:
        raise SecurityError(f"--grpc-server-cert {files.cert}: changed while being read ({exc})") from None
    context.verify_mode = ssl.CERT_REQUIRED if files.mutual else ssl.CERT_NONE
    return context


def server_ssl_context(files: TLSFiles) -> ssl.SSLContext:
    """The same TLS settings as an `ssl.SSLContext` (TLS 1.2 or later), for an HTTP server."""
    read_tls(files)  # the same checks and messages as the gRPC port
    return _ssl_context(files)


class ReloadableTLS:
    """gRPC server credentials and an HTTP `ssl.SSLContext` whose certificate `reload()` replaces for new
    connections."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self.material = read_tls(files)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()  # the fetcher runs on gRPC's threads
        self._front: ssl.SSLContext | None = None  # what the HTTP server was given; built on first use
        self._current: ssl.SSLContext | None = None  # the context new HTTP handshakes switch to

    def ssl_context(self) -> ssl.SSLContext:
        """The HTTP port's context (the same one on every call): new handshakes get the certificate of the
        last successful `reload()`."""
        if self._front is None:
            front = _ssl_context(self.files)
            front.sni_callback = self._switch
            self._front = self._current = front
        return self._front

    def _switch(self, connection: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext) -> None:
        # Runs in the handshake (a plain attribute read, no lock: the reference is replaced whole). Only the
        # certificate, key and CA store follow the context; the verify mode stays the front's, which a reload
        # cannot change (--grpc-use-ssl-mutual is read at start-up).
        current = self._current
        if current is not None and current is not front:
            connection.context = current

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.material.grpc_configuration(),
            self._fetch,  # type: ignore[arg-type]  # the stubs omit that None means "unchanged"
            require_client_authentication=self.files.mutual,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # None: keep the current configuration (called at every new handshake, so it must stay cheap).
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> None:
        """Read the files again; new connections use them. SecurityError (old certificate kept) if they
        fail the checks."""
        material = read_tls(self.files)
        # Built before anything changes: a file that fails here leaves both ports as they were.
        context = _ssl_context(self.files) if self._front is not None else None
        with self._lock:
            self.material = material
            self._pending = material.grpc_configuration()
        if context is not None:
            self._current = context
