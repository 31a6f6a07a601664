"""The HTTP image API takes what image clients send: the image as the body, or as the one file of a
multipart/form-data upload (`curl -F data=@x.png`, TorchServe's habit), within the same size limit; a
`top_k` above the number of classes answers every class, as KServe's classification extension does."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig

pytestmark = pytest.mark.slow

LIMIT = 1 << 20  # the HTTP body limit of the test server (grpc_max_message_bytes)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


Scenario = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def run(tiny_onnx: Path, scenario: Scenario) -> None:
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        grpc_max_message_bytes=LIMIT,
        max_image_bytes=LIMIT // 2,
        models=(ModelSettings(name="tiny", path=str(tiny_onnx)),),
    )

    async def main() -> None:
        server = InferenceServer(config)
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(session, f"http://127.0.0.1:{server.http_port}/v1/models/tiny/classify")
        finally:
            await server.stop(5)

    asyncio.run(main())


async def post(session: aiohttp.ClientSession, url: str, data: Any) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=data) as response:
        return response.status, await response.json()


def form(*parts: tuple[str, bytes]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, content in parts:
        data.add_field(name, content, filename=f"{name}.png", content_type="image/png")
    return data


def test_a_multipart_upload_is_classified_as_the_same_image_sent_as_the_body(tiny_onnx: Path) -> None:
    async def scenario(session: aiohttp.ClientSession, url: str) -> None:
        status, raw = await post(session, url, png())
        assert status == 200, raw
        status, uploaded = await post(session, url, form(("data", png())))
        assert status == 200, uploaded  # was 400 "not a decodable image": the form's framing was decoded
        assert uploaded["predictions"] == raw["predictions"]

    run(tiny_onnx, scenario)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_dash_f_uploads_an_image(tiny_onnx: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(png())

    async def scenario(session: aiohttp.ClientSession, url: str) -> None:
        command = ["curl", "-sS", "--fail-with-body", "-F", f"data=@{image}", f"{url}?top_k=3"]
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"predictions"' in done.stdout and done.stdout.count('"label"') == 3

    run(tiny_onnx, scenario)


def test_a_form_without_exactly_one_part_is_400_naming_both_forms(tiny_onnx: Path) -> None:
    async def scenario(session: aiohttp.ClientSession, url: str) -> None:
        empty = aiohttp.MultipartWriter("form-data", boundary="b")  # a form with no part at all
        for data in (form(("data", png()), ("more", png())), empty):
            status, body = await post(session, url, data)
            assert status == 400, body
            assert "one part, the image (curl -F data=@x.png)" in body["error"]
            assert "--data-binary" in body["error"]

    run(tiny_onnx, scenario)


def test_a_multipart_part_over_the_body_limit_is_413_even_without_a_content_length(tiny_onnx: Path) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # chunked: the size is known only while reading
        yield b'--b\r\nContent-Disposition: form-data; name="data"; filename="x.png"\r\n\r\n'
        for _ in range(LIMIT // 65536 + 2):
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    async def scenario(session: aiohttp.ClientSession, url: str) -> None:
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        async with session.post(url, data=chunks(), headers=headers) as response:
            assert response.status == 413, await response.text()

    run(tiny_onnx, scenario)


def test_top_k_above_the_number_of_classes_answers_every_class(tiny_onnx: Path) -> None:
    async def scenario(session: aiohttp.ClientSession, url: str) -> None:
        status, body = await post(session, f"{url}?top_k=1000", png())
        assert status == 200, body  # was 400: KServe's classification extension caps it
        assert sorted(p["index"] for p in body["predictions"]) == list(range(10))

    run(tiny_onnx, scenario)
