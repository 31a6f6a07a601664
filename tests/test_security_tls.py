"""TLS and mutual TLS on the gRPC port: a client without a certificate is refused, the real tritonclient
and our client library connect with one, certificates reload on SIGHUP without dropping a connection, and a
missing or mismatched file stops the server at start-up with a message naming the option."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kserve_fixtures import KServeServer, start_server, stop_server
from support.server import GRPC_CORE_LINE
from tls_certs import Pki, make_pki, mutual_tls_args
from tritonclient.utils import InferenceServerException

from resnet_serve.client.channel import TLSConfig
from resnet_serve.client.results import ClassifyError
from resnet_serve.client.sync import Client
from resnet_serve.server.app import InferenceServer, StartupError
from resnet_serve.server.config import ModelSettings, ServerConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[KServeServer, Path]]:
    """An mTLS server whose certificate files are copies (the reload test replaces them)."""
    tmp = tmp_path_factory.mktemp("mutual")
    certs = tmp / "certs"
    server = start_server(tmp, *mutual_tls_args(pki, certs))
    try:
        yield server, certs
    finally:
        stop_server(server)


def check(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)


def credentials(pki: Pki, ca: Path | None = None, client_cert: bool = True) -> grpc.ChannelCredentials:
    if not client_cert:
        return grpc.ssl_channel_credentials((ca or pki.ca).read_bytes())
    return grpc.ssl_channel_credentials(
        (ca or pki.ca).read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )


def test_acceptance_an_mtls_port_refuses_a_client_without_a_certificate(
    mutual: tuple[KServeServer, Path], pki: Pki
) -> None:
    server, _ = mutual
    with (
        grpc.secure_channel(server.url, credentials(pki, client_cert=False)) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        check(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call reaches a servicer
    no_cert = tc.InferenceServerClient(server.url, ssl=True, root_certificates=str(pki.ca))
    with pytest.raises(InferenceServerException):
        no_cert.is_server_live(client_timeout=5)
    with grpc.insecure_channel(server.url) as channel, pytest.raises(grpc.RpcError):
        check(channel)


def test_failed_handshakes_leave_no_grpc_core_line_in_the_server_log(
    mutual: tuple[KServeServer, Path], pki: Pki
) -> None:
    """A plaintext client and one without a certificate: gRPC core wrote an `I…` line for each."""
    server, _ = mutual
    for channel in (
        grpc.insecure_channel(server.url),
        grpc.secure_channel(server.url, credentials(pki, client_cert=False)),
    ):
        with channel, pytest.raises(grpc.RpcError):
            check(channel)
    time.sleep(0.2)  # the server's side of the handshake ends after the client's
    core = [line for line in server.log().splitlines() if GRPC_CORE_LINE.match(line)]
    assert not core, core


def test_mtls_clients_with_a_certificate_get_through_tritonclient_and_our_client(
    mutual: tuple[KServeServer, Path], pki: Pki
) -> None:
    server, _ = mutual
    triton = tc.InferenceServerClient(
        server.url,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    )
    tensor = tc.InferInput("input", [2, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert triton.infer("tiny", [tensor]).as_numpy("logits").shape == (2, 10)
    tls = TLSConfig(root_certs=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    with Client(server.url, tls=tls) as client:
        assert {m.name for m in client.list_models()} >= {"tiny"}
    with Client(server.url, tls=TLSConfig(root_certs=pki.ca), retry=None) as client:
        with pytest.raises(ClassifyError) as info:
            client.list_models(timeout=5)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_sighup_reloads_the_certificate_and_an_open_connection_keeps_working(
    mutual: tuple[KServeServer, Path], pki: Pki
) -> None:
    server, certs = mutual
    with grpc.secure_channel(server.url, credentials(pki)) as open_channel:
        assert check(open_channel) == health_pb2.HealthCheckResponse.SERVING
        # The new certificate comes from another CA: a new connection proves which one the server presents.
        shutil.copy(pki.server2_cert, certs / "server.pem")
        shutil.copy(pki.server2_key, certs / "server.key")
        os.kill(server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reloaded the TLS certificate" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reloaded the TLS certificate" in server.log()
        assert server.process.poll() is None  # SIGHUP no longer ends the process
        for _ in range(3):
            assert check(open_channel) == health_pb2.HealthCheckResponse.SERVING  # same connection
    with grpc.secure_channel(server.url, credentials(pki, ca=pki.ca2)) as channel:
        assert check(channel) == health_pb2.HealthCheckResponse.SERVING
    with grpc.secure_channel(server.url, credentials(pki)) as channel, pytest.raises(grpc.RpcError):
        check(channel)  # the old CA no longer vouches for what the server presents
    # A reload with a broken key keeps the working certificate and says why.
    (certs / "server.key").write_bytes(pki.client_key.read_bytes())
    os.kill(server.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "not reloaded" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "does not match the certificate" in server.log()
    with grpc.secure_channel(server.url, credentials(pki, ca=pki.ca2)) as channel:
        assert check(channel) == health_pb2.HealthCheckResponse.SERVING


def test_bad_certificate_files_stop_the_server_before_it_loads_a_model(
    tiny_onnx: Path, pki: Pki, tmp_path: Path
) -> None:
    def config(cert: Path, key: Path) -> ServerConfig:
        return ServerConfig(
            host="127.0.0.1",
            grpc_port=0,
            http_port=0,
            metrics_port=-1,
            models=(ModelSettings(name="tiny", path=str(tiny_onnx)),),
            grpc_use_ssl=True,
            grpc_server_cert=str(cert),
            grpc_server_key=str(key),
        )

    async def start(cfg: ServerConfig) -> str:
        server = InferenceServer(cfg)
        with pytest.raises(StartupError) as info:
            await server.start()
        assert server.manager.names() == []  # nothing was loaded
        return str(info.value)

    assert "--grpc-server-cert" in asyncio.run(start(config(tmp_path / "missing.pem", pki.server_key)))
    assert "does not match" in asyncio.run(start(config(pki.server_cert, pki.client_key)))
    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable.key"
        shutil.copy(pki.server_key, unreadable)
        unreadable.chmod(0)
        assert "permission denied" in asyncio.run(start(config(pki.server_cert, unreadable)))


def test_serve_with_a_missing_certificate_exits_1_with_one_log_line(tiny_onnx: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable, "-m", "resnet_serve", "serve", "--model", f"tiny={tiny_onnx}",
            "--grpc-port", "0", "--metrics-port", "-1", "--grpc-use-ssl", "true",
            "--grpc-server-cert", str(tmp_path / "nope.pem"), "--grpc-server-key", str(tmp_path / "nope.key"),
        ],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert run.returncode == 1
    assert f"cannot start: --grpc-server-cert {tmp_path / 'nope.pem'}: no such file" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("tls_flags", "reason"),
    [
        ((), "the server closed the connection while it was being set up: it may expect TLS (--tls)"),
        (("--tls",), "TLS handshake failed: the server's certificate is not signed by the trusted CA"),
    ],
)
def test_classify_against_a_tls_port_names_the_mismatch_within_3s(
    mutual: tuple[KServeServer, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tls_flags: tuple[str, ...],
    reason: str,
) -> None:
    """A plaintext client, and a TLS client trusting the system CAs only: both were "no server answered"
    after 10 s."""
    from PIL import Image

    from resnet_serve.cli.main import main

    server, _ = mutual
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    start = time.monotonic()
    code = main(["classify", "--server", server.url, *tls_flags, str(image)])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == 1 and elapsed < 3.0, (elapsed, err)
    assert err.startswith(f"resnet-serve classify: error: cannot connect to {server.url}: {reason}"), err
