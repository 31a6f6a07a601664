"""The HTTP/REST port enforces what the gRPC port does: Triton's restricted protocol groups (HTTP header
`<key>`, as Triton's HTTP API) and the image API's bearer tokens (401 with `WWW-Authenticate: Bearer`);
health stays open."""

from __future__ import annotations

from collections.abc import Iterator

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
