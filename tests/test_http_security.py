"""The HTTP/REST port enforces what the gRPC port does: Triton's restricted protocol groups (HTTP header
`<key>`, as Triton's HTTP API) and the image API's bearer tokens (401 with `WWW-Authenticate: Bearer`);
health stays open."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from kserve_fixtures import KServeServer, start_server, stop_server
from test_http_kserve import fetch, png
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

TOKEN = "0123456789abcdef0123456789abcdef"
KEY, VALUE = "admin-key", "admin-secret-value"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServeServer]:
    tmp = tmp_path_factory.mktemp("http-security")
    tokens = tmp / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    server = start_server(
        tmp,
        "--grpc-restricted-protocol", f"model-repository,statistics:{KEY}={VALUE}",
        "--model-control-mode", "explicit",
        "--auth-token-file", str(tokens),
    )  # fmt: skip
    try:
        yield server
    finally:
        stop_server(server)


def test_restricted_groups_need_the_header_over_http_and_health_stays_open(guarded: KServeServer) -> None:
    client = httpclient.InferenceServerClient(guarded.http_url)
    try:
        assert client.is_server_ready() and client.is_model_ready("spare")
        for headers in (None, {KEY: "wrong"}):
            with pytest.raises(InferenceServerException) as info:
                client.unload_model("spare", headers=headers)
            assert info.value.status() == "503" and VALUE not in str(info.value)
            with pytest.raises(InferenceServerException) as info:
                client.get_inference_statistics(headers=headers)
            assert info.value.status() == "503"
        assert client.is_model_ready("spare")
        client.unload_model("spare", headers={KEY: VALUE})
        assert not client.is_model_ready("spare")
        client.load_model("spare", headers={KEY: VALUE})
        assert client.get_inference_statistics(headers={KEY: VALUE})["model_stats"]
        assert client.get_model_metadata("tiny")["name"] == "tiny"  # an unrestricted group
    finally:
        client.close()


def test_the_image_api_needs_a_bearer_token_over_http(guarded: KServeServer) -> None:
    status, headers, _ = fetch(guarded, "POST", "/v1/models/tiny/classify", png_image())
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    status, _, _ = fetch(
        guarded,
        "POST",
        "/v1/models/tiny/classify",
        png_image(),
        {"Authorization": "Bearer wrong-token-0000000"},
    )
    assert status == 401
    status, _, _ = fetch(
        guarded, "POST", "/v1/models/tiny/classify", png_image(), {"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200


def png_image() -> bytes:
    import numpy as np

    return png(np.arange(64, dtype=np.uint8).reshape(8, 8))


def test_tls_on_the_grpc_port_protects_the_http_port_with_the_same_certificate(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import ssl
    import urllib.error
    import urllib.request

    from tls_certs import make_pki

    tmp = tmp_path_factory.mktemp("http-tls")
    pki = make_pki(tmp / "pki")
    server = start_server(
        tmp,
        "--grpc-use-ssl", "true",
        "--grpc-server-cert", str(pki.server_cert),
        "--grpc-server-key", str(pki.server_key),
    )  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=str(pki.ca))
        with urllib.request.urlopen(
            f"https://{server.http_url}/v2/health/ready", context=context, timeout=10
        ) as response:
            assert response.status == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=10)
    finally:
        stop_server(server)


def _serial(pem: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


def _https(server: KServeServer, ca: Path, client: tuple[Path, Path] | None) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(*client)
    host, port = server.http_url.rsplit(":", 1)
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=10)


def _ready(connection: http.client.HTTPSConnection) -> int:
    """GET /v2/health/ready on a keep-alive connection; the certificate's serial it was made with."""
    from cryptography import x509

    connection.request("GET", "/v2/health/ready")
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    assert connection.sock is not None
    der = connection.sock.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def _wait_for_log(server: KServeServer, text: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while server.log().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.log().count(text) == count


def test_sighup_reloads_the_http_ports_certificate_and_an_open_connection_keeps_working(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tls_certs import make_pki, mutual_tls_args

    tmp = tmp_path_factory.mktemp("http-tls-reload")
    pki = make_pki(tmp / "pki")
    certs = tmp / "certs"
    client = (pki.client_cert, pki.client_key)
    server = start_server(tmp, *mutual_tls_args(pki, certs))
    try:
        kept = _https(server, pki.ca, client)
        assert _ready(kept) == _serial(pki.server_cert)
        # The new certificate comes from another CA, so a new connection proves which one the server presents.
        shutil.copy(pki.server2_cert, certs / "server.pem")
        shutil.copy(pki.server2_key, certs / "server.key")
        os.kill(server.process.pid, signal.SIGHUP)
        _wait_for_log(server, "reloaded the TLS certificate", 1)
        assert _ready(_https(server, pki.ca2, client)) == _serial(pki.server2_cert)
        for _ in range(3):  # the connection made before the reload: same socket, old certificate
            assert _ready(kept) == _serial(pki.server_cert)
        with pytest.raises(ssl.SSLError):  # the old CA no longer vouches for what new connections get
            _ready(_https(server, pki.ca, client))
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            _ready(_https(server, pki.ca2, None))  # still mutual after the reload: no certificate, no answer
        # A reload whose key does not match keeps the working certificate on this port too, logged once.
        (certs / "server.key").write_bytes(pki.client_key.read_bytes())
        os.kill(server.process.pid, signal.SIGHUP)
        _wait_for_log(server, "TLS certificate not reloaded", 1)
        assert _ready(_https(server, pki.ca2, client)) == _serial(pki.server2_cert)
        assert _ready(kept) == _serial(pki.server_cert)
        kept.close()
    finally:
        stop_server(server)
