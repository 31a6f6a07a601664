"""The HTTP/REST API's life in the server process: it drains with gRPC (accepted requests finish, new ones
get 503, readiness turns 503) and a taken port stops start-up with one line."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from resnet_serve.server.app import InferenceServer, StartupError
from resnet_serve.server.config import ModelSettings, ServerConfig

pytestmark = pytest.mark.slow


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def config_for(model: Path, http_port: int = 0) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=http_port,
        metrics_port=-1,
        models=(ModelSettings(name="tiny", path=str(model)),),
    )


def test_drain_finishes_accepted_http_requests_and_refuses_new_ones_with_503(tiny_onnx: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx))
        await server.start()
        assert server.http_port and f"http=127.0.0.1:{server.http_port}" in server.summary()
        model = server.manager.get("tiny")
        decode = model.preprocessor
        assert decode is not None

        def held_decode(data: bytes) -> np.ndarray:
            entered.set()
            release.wait(30)
            return decode(data)

        model.preprocessor = held_decode  # type: ignore[assignment]
        base = f"http://127.0.0.1:{server.http_port}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/v2/health/ready") as response:
                    assert response.status == 200
                held = asyncio.ensure_future(session.post(f"{base}/v1/models/tiny/classify", data=png()))
                assert await asyncio.to_thread(entered.wait, 10)
                assert server.ctx.in_flight.count == 1
                stopping = asyncio.ensure_future(server.stop(30))
                await asyncio.sleep(0.2)
                assert not stopping.done()
                async with session.get(f"{base}/v2/health/ready") as response:
                    assert response.status == 503
                async with session.get(f"{base}/v2/health/live") as response:
                    assert response.status == 200
                tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}
                infer = {"inputs": [tensor]}
                for method, path, body in (
                    ("GET", "/v2/models/tiny", None),
                    ("POST", "/v2/models/tiny/infer", infer),
                    ("POST", "/v1/models/tiny/classify", png()),
                ):
                    data = json.dumps(body).encode() if isinstance(body, dict) else body
                    async with session.request(method, base + path, data=data) as response:
                        assert response.status == 503
                        assert "shutting down" in (await response.json())["error"]
                release.set()
                async with await held as response:
                    assert response.status == 200
                    assert (await response.json())["predictions"]
                await stopping
        finally:
            release.set()
            await server.stop(5)

    asyncio.run(main())


def test_a_taken_http_port_stops_start_up_with_one_line(tiny_onnx: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            server = InferenceServer(config_for(tiny_onnx, http_port=port))
            with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port} \\(http_port\\)"):
                await server.start()
            await server.stop(0)

        asyncio.run(main())
