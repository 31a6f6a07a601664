"""The client library and `resnet-serve classify` against a real `resnet-serve serve` process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from kserve_fixtures import TINY_LABELS, KServeServer, kserve_server
from PIL import Image

from resnet_serve.cli.main import main
from resnet_serve.client import AsyncClient, Classification, ClassifyError, Client

pytestmark = pytest.mark.slow
__all__ = ["kserve_server"]  # the fixture, imported so pytest finds it


@pytest.fixture(scope="module")
def server(kserve_server: KServeServer) -> KServeServer:
    """A real server (one per module) with the tiny classifier as `tiny` (versions 1 and 2)."""
    return kserve_server


def digits(n: int) -> list[Image.Image]:
    from sklearn.datasets import load_digits

    images = np.round(load_digits().images[:n] * 255 / 16).astype(np.uint8)
    return [Image.fromarray(img, mode="L") for img in images]


def test_the_sync_client_classifies_real_images(server: KServeServer) -> None:
    with Client(server.url, model="tiny") as client:
        client.wait_until_ready()
        for image in digits(3):
            result = client.classify(image, top_k=3, request_id="live-1")
            assert (result.model, result.request_id) == ("tiny", "live-1")
            assert len(result.predictions) == 3
            assert {p.label for p in result.predictions} <= set(TINY_LABELS)
            scores = [p.score for p in result.predictions]
            assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
            assert result.timing.total_us > 0 and result.timing.batch_size >= 1
        (tiny,) = [m for m in client.list_models() if m.name == "tiny"]
        assert tiny.input_shape == (1, 8, 8) and tuple(tiny.labels) == tuple(TINY_LABELS)


def test_a_corrupt_image_is_invalid_argument_from_the_real_server(server: KServeServer) -> None:
    with Client(server.url, model="tiny") as client, pytest.raises(ClassifyError) as info:
        client.classify(b"\x89PNG\r\n\x1a\n truncated")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_batch_and_stream_match_single_calls(server: KServeServer) -> None:
    images = digits(4)
    with Client(server.url, model="tiny") as client:
        singles = [client.classify(img, top_k=1).top.label for img in images]
        batch = client.classify_batch([*images, b"corrupt"], top_k=1)
        assert [r.top.label for r in batch[:4] if isinstance(r, Classification)] == singles
        assert isinstance(batch[4], ClassifyError) and batch[4].code == grpc.StatusCode.INVALID_ARGUMENT
        streamed = dict(client.classify_stream(images, top_k=1))
        labels = [r.top.label for i in range(4) if isinstance(r := streamed[i], Classification)]
        assert labels == singles


def test_the_async_client_against_the_real_server(server: KServeServer) -> None:
    async def scenario() -> list[str]:
        async with AsyncClient(server.url, model="tiny") as client:
            results = await asyncio.gather(*(client.classify(img, top_k=1) for img in digits(5)))
            return [r.top.label for r in results]

    with Client(server.url, model="tiny") as client:
        expected = [client.classify(img, top_k=1).top.label for img in digits(5)]
    assert asyncio.run(scenario()) == expected


def test_classify_cli_reports_good_corrupt_and_missing_files(
    server: KServeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, image in enumerate(digits(3)):
        image.save(tmp_path / f"digit{i}.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(
        ["classify", "--server", server.url, "--model", "tiny", "--format", "json", "--top-k", "2",
         str(tmp_path), str(tmp_path / "missing.png")]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    records = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert set(records) == {"corrupt.jpg", "digit0.png", "digit1.png", "digit2.png", "missing.png"}
    for i in range(3):
        ok = records[f"digit{i}.png"]
        assert ok["model"] == "tiny" and len(ok["predictions"]) == 2
        assert ok["predictions"][0]["label"] in TINY_LABELS
    assert records["corrupt.jpg"]["error"]["code"] == "INVALID_ARGUMENT"
    assert records["missing.png"]["error"]["code"] == "NOT_FOUND"
    assert "5 images" in err and "3 ok, 2 failed" in err
