"""Closed admin APIs and tokens, on a real `resnet-serve serve` process, through the real tritonclient and
our client library: the issue's acceptance test (TLS + a restricted model-repository group + explicit model
control), bearer tokens on the image API, health open to probes, and model control off by default."""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kserve_fixtures import KServeServer, start_server, stop_server
from PIL import Image
from support.tiny_model import write_tiny_onnx
from tls_certs import Pki, make_pki
from tritonclient.utils import InferenceServerException

from resnet_serve.cli.main import main
from resnet_serve.client.channel import TLSConfig
from resnet_serve.client.results import ClassifyError
from resnet_serve.client.sync import Client
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.security.model_control import REFUSED

pytestmark = pytest.mark.slow

ADMIN_KEY = "admin-key"
ADMIN_VALUE = "a-long-admin-value-0123456789"
ADMIN_HEADERS = {f"triton-grpc-protocol-{ADMIN_KEY}": ADMIN_VALUE}
TOKEN = "image-api-token-0123456789abcdef"


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[KServeServer]:
    """TLS, model-repository restricted behind a header, explicit model control, image-API tokens, and the
    debug access log on (so the test can look for secrets in it)."""
    tmp = tmp_path_factory.mktemp("secured")
    tokens = tmp / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    server = start_server(
        tmp,
        "--grpc-use-ssl", "true",
        "--grpc-server-cert", str(pki.server_cert),
        "--grpc-server-key", str(pki.server_key),
        "--grpc-restricted-protocol", f"model-repository:{ADMIN_KEY}={ADMIN_VALUE}",
        "--model-control-mode", "explicit",
        "--auth-token-file", str(tokens),
        "--log-level", "debug",
    )  # fmt: skip
    try:
        yield server
    finally:
        stop_server(server)


def triton(server: KServeServer, pki: Pki) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(server.url, ssl=True, root_certificates=str(pki.ca))


def test_acceptance_unload_needs_the_header_on_a_tls_port(secured: KServeServer, pki: Pki) -> None:
    client = triton(secured, pki)
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("spare")
    assert info.value.status() == "StatusCode.UNAVAILABLE"  # Triton's answer to a restricted protocol
    assert ADMIN_KEY not in str(info.value) and ADMIN_VALUE not in str(info.value)
    with pytest.raises(InferenceServerException):
        client.unload_model("spare", headers={f"triton-grpc-protocol-{ADMIN_KEY}": "wrong"})
    assert client.is_model_ready("spare")  # health: open, and the refused unloads did nothing
    client.unload_model("spare", headers=ADMIN_HEADERS)
    assert not client.is_model_ready("spare")
    client.load_model("spare", headers=ADMIN_HEADERS)
    assert client.is_model_ready("spare")


def test_acceptance_a_plaintext_client_cannot_connect_to_the_tls_port(secured: KServeServer) -> None:
    plain = tc.InferenceServerClient(secured.url)
    with pytest.raises(InferenceServerException) as info:
        plain.is_server_live(client_timeout=5)
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    with Client(secured.url, retry=None, token=TOKEN) as ours, pytest.raises(ClassifyError) as error:
        ours.classify(png(), timeout=5)
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_tritonclient_infers_over_tls_and_unrestricted_groups_need_no_header(
    secured: KServeServer, pki: Pki
) -> None:
    client = triton(secured, pki)
    tensor = tc.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), dtype=np.float32))
    assert client.infer("tiny", [tensor]).as_numpy("logits").shape == (1, 10)
    assert client.get_model_metadata("tiny", as_json=True)["name"] == "tiny"
    assert client.get_inference_statistics("tiny", as_json=True)["model_stats"]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_repository_index()
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert client.get_model_repository_index(headers=ADMIN_HEADERS, as_json=True)["models"]


def test_the_image_api_needs_a_bearer_token_and_health_stays_open(secured: KServeServer, pki: Pki) -> None:
    tls = TLSConfig(root_certs=pki.ca)
    with Client(secured.url, tls=tls, token=TOKEN) as client:
        assert client.classify(png(), model="tiny").predictions
        assert {m.name for m in client.list_models()} >= {"tiny", "spare"}
    for token in (None, "x" * 32, TOKEN + "x"):
        with (
            Client(secured.url, tls=tls, token=token, retry=None) as client,
            pytest.raises(ClassifyError) as info,
        ):
            client.classify(png(), model="tiny")
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.message == "missing or invalid bearer token"
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with grpc.secure_channel(secured.url, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[no-untyped-call]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_classify_sends_the_token_over_tls_and_the_server_log_never_shows_a_secret(
    secured: KServeServer, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "dark.png"
    Image.new("L", (8, 8), 0).save(image)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    base = ["classify", "--server", secured.url, "--ca-cert", str(pki.ca), "--model", "tiny", str(image)]
    assert main([*base, "--token-file", str(token_file)]) == 0
    assert "1 ok, 0 failed" in capsys.readouterr().err
    assert main(base) == 1
    captured = capsys.readouterr()
    assert "UNAUTHENTICATED" in captured.out + captured.err
    log = secured.log()
    assert "tls=on" in log and "restricted=model-repository" in log
    for secret in (TOKEN, ADMIN_VALUE):
        assert secret not in log


def test_model_control_is_off_by_default_load_and_unload_are_refused_as_triton_does(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    from tritonclient.grpc import aio as triton_aio

    repository = tmp_path / "repository"
    write_tiny_onnx(repository / "spare" / "1" / "model.onnx", seed=2)
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        model_repository=str(repository),
        models=(ModelSettings(name="tiny", path=str(tiny_onnx)),),
    )
    assert config.model_control_mode == "none"

    async def main_() -> None:
        server = InferenceServer(config)
        await server.start()
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            overrides = functools.partial(client.load_model, config="{}", files={"file:1/model.onnx": b"x"})
            for call in (client.unload_model, client.load_model, overrides):
                with pytest.raises(InferenceServerException) as info:
                    await call("spare")
                assert info.value.status() == "StatusCode.UNAVAILABLE"
                assert "explicit model load / unload is not allowed" in str(info.value)
                assert REFUSED in str(info.value)
            assert await client.is_model_ready("spare")
            index = await client.get_model_repository_index(as_json=True)
            assert {m["name"] for m in index["models"]} == {"tiny", "spare"}
        finally:
            await client.close()
            await server.stop(5)

    asyncio.run(main_())


def test_bench_measures_over_tls_with_the_token_on_both_apis(
    secured: KServeServer, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("RESNET_SERVE_AUTH_TOKEN", TOKEN)  # bench's other way to get a token
    quick = ["--warmup", "0.2", "--window", "0.4", "--max-step-time", "1.2", "--concurrency", "1"]
    for protocol in ("image", "kserve"):
        out = tmp_path / protocol
        args = ["bench", "--server", secured.url, "--ca-cert", str(pki.ca), "--out", str(out)]
        assert main([*args, *quick, "--protocol", protocol, "--model", "tiny"]) == 0
        step = json.loads((out / "bench.json").read_text())["steps"][0]
        assert step["requests"] > 0 and step["error_count"] == 0, protocol


def test_a_restricted_stream_is_refused_and_the_header_opens_it(tiny_onnx: Path) -> None:
    from resnet_serve.protos import classifier_pb2 as pb
    from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
    from resnet_serve.server.security.restrict import parse_restriction

    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        models=(ModelSettings(name="tiny", path=str(tiny_onnx)),),
        grpc_restricted_protocol=(parse_restriction(f"inference:{ADMIN_KEY}={ADMIN_VALUE}"),),
    )

    async def main_() -> None:
        server = InferenceServer(config)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
                requests = [pb.ClassifyRequest(image=png())]
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    _ = [r async for r in stub.ClassifyStream(iter(requests), timeout=10)]
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert info.value.details() == "This protocol is restricted"
                headers = tuple(ADMIN_HEADERS.items())
                replies = [r async for r in stub.ClassifyStream(iter(requests), timeout=10, metadata=headers)]
                assert replies[0].response.predictions
        finally:
            await server.stop(5)

    asyncio.run(main_())


def test_a_reload_replaces_the_tokens_and_a_bad_token_file_keeps_the_old_ones(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    from resnet_serve.protos import classifier_pb2 as pb
    from resnet_serve.protos import classifier_pb2_grpc as pb_grpc

    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    new_token = "rotated-token-" + "9" * 20
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        models=(ModelSettings(name="tiny", path=str(tiny_onnx)),),
        auth_token_file=str(tokens),
    )

    async def main_() -> None:
        server = InferenceServer(config)
        await server.start()
        assert server.security is not None
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]

                async def code(token: str) -> grpc.StatusCode:
                    try:
                        await stub.ListModels(
                            pb.ListModelsRequest(),
                            timeout=10,
                            metadata=(("authorization", f"Bearer {token}"),),
                        )
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()
                    return grpc.StatusCode.OK

                assert await code(TOKEN) == grpc.StatusCode.OK
                tokens.write_text(new_token + "\n")
                assert server.security.reload()  # what SIGHUP calls
                assert await code(TOKEN) == grpc.StatusCode.UNAUTHENTICATED
                assert await code(new_token) == grpc.StatusCode.OK
                tokens.write_text("short\n")
                assert not server.security.reload()
                assert await code(new_token) == grpc.StatusCode.OK
        finally:
            await server.stop(5)

    asyncio.run(main_())
