"""The Python client library (sync and asyncio) against an in-process fake server."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fake_server import FakeClassifier, FakeServer
from PIL import Image

from resnet_serve.client import (
    AsyncClient,
    Classification,
    ClassifyError,
    Client,
    RetryPolicy,
    TLSConfig,
    encode_image,
)

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


def png(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


@pytest.fixture
def client(server: FakeServer) -> Iterator[Client]:
    with Client(server.target, timeout=10) as c:
        yield c


def test_classify_returns_typed_results_with_the_servers_timing(client: Client) -> None:
    result = client.classify(png(250), top_k=3, request_id="abc")
    assert isinstance(result, Classification)
    assert (result.model, result.version, result.request_id) == ("fake", "1", "abc")
    assert result.predictions[0].label == "9"
    assert len(result.predictions) == 3
    assert result.top.score == pytest.approx(0.91)
    assert result.timing.batch_size == 1
    assert result.latency_s > 0


@pytest.mark.parametrize("kind", ["bytes", "path", "str", "pil", "array_uint8", "array_float", "array_hwc"])
def test_every_image_kind_reaches_the_server_with_its_pixels(
    client: Client, tmp_path: Path, kind: str
) -> None:
    # Brightness 128 is class 5 on the fake server; 0 would be class 0: the pixels must survive encoding.
    file = tmp_path / "img.png"
    file.write_bytes(png(128))
    image: object = {
        "bytes": png(128),
        "path": file,
        "str": str(file),
        "pil": Image.new("RGB", (8, 8), (128, 128, 128)),
        "array_uint8": np.full((8, 8), 128, np.uint8),
        "array_float": np.full((8, 8), 128 / 255, np.float32),
        "array_hwc": np.full((8, 8, 3), 128, np.uint8),
    }[kind]
    assert client.classify(image).top.label == "5"  # type: ignore[arg-type]


def test_arrays_that_are_not_images_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="H×W"):
        encode_image(np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_image(np.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="int64"):
        encode_image(np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError, match="int"):
        encode_image(42)  # type: ignore[arg-type]


def test_a_corrupt_image_raises_a_typed_error_with_the_status_code(client: Client) -> None:
    with pytest.raises(ClassifyError) as info:
        client.classify(b"not an image", request_id="bad-1")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "decode" in info.value.message
    assert info.value.request_id == "bad-1"


def test_the_client_default_model_is_sent_and_can_be_overridden(server: FakeServer) -> None:
    with Client(server.target, model="nope") as c:
        with pytest.raises(ClassifyError) as info:
            c.classify(png(0))
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert c.classify(png(0), model="fake").top.label == "0"


def test_unavailable_is_retried_with_backoff_until_it_succeeds() -> None:
    servicer = FakeClassifier(unavailable_first=2)
    with FakeServer(servicer) as s, Client(s.target, retry=FAST_RETRY) as c:
        assert c.classify(png(0)).top.label == "0"
    assert servicer.calls == 3


def test_without_retries_unavailable_surfaces_at_once() -> None:
    servicer = FakeClassifier(unavailable_first=1)
    with FakeServer(servicer) as s, Client(s.target, retry=None) as c, pytest.raises(ClassifyError) as info:
        c.classify(png(0))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 1


def test_other_errors_are_never_retried(server: FakeServer) -> None:
    before = server.servicer.calls
    with Client(server.target, retry=FAST_RETRY) as c, pytest.raises(ClassifyError):
        c.classify(b"corrupt")
    assert server.servicer.calls == before + 1


def test_the_deadline_is_enforced_per_call() -> None:
    with FakeServer(service_time_s=1.0) as s, Client(s.target) as c, pytest.raises(ClassifyError) as info:
        c.classify(png(0), timeout=0.05)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_batch_returns_one_result_or_error_per_image_in_order(client: Client) -> None:
    results = client.classify_batch([png(0), b"corrupt", png(255)], top_k=1)
    assert isinstance(results[0], Classification) and results[0].top.label == "0"
    assert isinstance(results[1], ClassifyError) and results[1].code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(results[2], Classification) and results[2].top.label == "9"


def test_a_stream_answers_every_input_by_index_including_unreadable_ones(
    client: Client, tmp_path: Path
) -> None:
    images: list[object] = [png(10 * i) for i in range(6)] + [tmp_path / "missing.png"]
    got = dict(client.classify_stream(iter(images), top_k=1))  # type: ignore[arg-type]
    assert sorted(got) == list(range(7))
    for i in range(6):
        result = got[i]
        assert isinstance(result, Classification)
        assert result.top.label == str(min(int(10 * i / 25.6), 9))
        assert result.latency_s > 0
    assert isinstance(got[6], ClassifyError) and got[6].code == grpc.StatusCode.INVALID_ARGUMENT


def test_list_models_describes_the_served_models(client: Client) -> None:
    (model,) = client.list_models()
    assert (model.name, model.is_default, model.input_shape) == ("fake", True, (1, 8, 8))
    assert model.versions[0].state == "READY"
    assert len(model.labels) == 10


def test_wait_until_ready_gives_up_with_unavailable() -> None:
    with Client("127.0.0.1:1") as c, pytest.raises(ClassifyError) as info:
        c.wait_until_ready(timeout=0.2)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


REFUSED = "cannot connect to 127.0.0.1:1: connection refused: nothing listens there"


def test_wait_until_ready_names_the_last_connection_failure_sync_and_async() -> None:
    """fail_fast raises at the first refused connection; waiting says why it gave up."""
    with Client("127.0.0.1:1") as c:
        with pytest.raises(ClassifyError) as info:
            c.wait_until_ready(timeout=30, fail_fast=True)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.message.startswith(REFUSED)
        with pytest.raises(ClassifyError) as info:
            c.wait_until_ready(timeout=1.0)
        assert info.value.message.startswith("no server answered at 127.0.0.1:1 within 1s; last attempt: ")
        assert REFUSED in info.value.message

    async def scenario() -> None:
        async with AsyncClient("127.0.0.1:1") as c:
            with pytest.raises(ClassifyError) as info:
                await c.wait_until_ready(timeout=30, fail_fast=True)
            assert info.value.message.startswith(REFUSED)
            with pytest.raises(ClassifyError) as info:
                await c.wait_until_ready(timeout=1.0)
            assert REFUSED in info.value.message

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_the_async_client_supports_single_batch_and_stream_calls(server: FakeServer) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.target) as c:
            await c.wait_until_ready()
            singles = await asyncio.gather(*(c.classify(png(v), top_k=2) for v in (0, 128, 255)))
            assert [r.top.label for r in singles] == ["0", "5", "9"]
            with pytest.raises(ClassifyError) as info:
                await c.classify(b"corrupt")
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            batch = await c.classify_batch([png(0), b"x"])
            assert isinstance(batch[0], Classification) and isinstance(batch[1], ClassifyError)

            async def images() -> object:
                for v in (0, 255, 128):
                    yield png(v)

            streamed = {i: r async for i, r in c.classify_stream(images())}  # type: ignore[arg-type]
            assert {i: r.top.label for i, r in streamed.items() if isinstance(r, Classification)} == {
                0: "0",
                1: "9",
                2: "5",
            }
            assert (await c.list_models())[0].name == "fake"

    asyncio.run(scenario())


def test_importing_the_client_pulls_in_neither_torch_nor_onnxruntime() -> None:
    code = (
        "import sys, resnet_serve.client; "
        "from resnet_serve.client import Client, AsyncClient, ClassifyError; "
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_dir_of_the_client_package_lists_its_lazily_imported_names() -> None:
    import resnet_serve.client as package

    listed = dir(package)
    for name in package.__all__:
        assert name in listed, name
        assert getattr(package, name) is not None
    with pytest.raises(AttributeError, match=r"resnet_serve\.client"):
        package.Nothing  # noqa: B018 - the attribute access is the test


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_with_a_private_root_certificate(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=resnet-serve-test",
            "-addext",
            "subjectAltName=DNS:resnet-serve-test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with FakeServer(tls_key_and_cert=(key.read_bytes(), cert.read_bytes())) as s:
        tls = TLSConfig(root_certs=cert, server_name="resnet-serve-test")
        with Client(s.target, tls=tls) as c:
            assert c.classify(png(255)).top.label == "9"
        with Client(s.target, retry=None, timeout=5) as plaintext, pytest.raises(ClassifyError):
            plaintext.classify(png(255))
