"""The HTTP shared-memory routes carry tritonclient.http's requests into the gRPC servicer's methods and their
answers back, so a shared-memory RPC implemented in server/kserve/service.py works on both protocols.

The RPCs themselves are another slice's; here they are stand-ins patched onto KServeService, and the real
tritonclient.http drives an in-process server (run on a thread, since the sync client blocks).
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.errors import not_found
from resnet_serve.server.kserve.service import KServeService

pytestmark = pytest.mark.slow


class Regions:
    """Stand-in shared-memory RPCs that record what reached them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def register(self, request: Any, context: Any) -> Any:
        self.calls.append(("register", (request.name, request.key, request.offset, request.byte_size)))
        return pb.SystemSharedMemoryRegisterResponse()

    async def status(self, request: Any, context: Any) -> Any:
        if request.name not in ("", "input"):
            raise not_found(f"no shared memory region {request.name!r}")
        region = pb.SystemSharedMemoryStatusResponse.RegionStatus(
            name="input", key="/k", offset=8, byte_size=256
        )
        return pb.SystemSharedMemoryStatusResponse(regions={"input": region})

    async def unregister(self, request: Any, context: Any) -> Any:
        self.calls.append(("unregister", request.name))
        return pb.SystemSharedMemoryUnregisterResponse()

    async def cuda_register(self, request: Any, context: Any) -> Any:
        self.calls.append(("cuda", (request.name, request.raw_handle, request.device_id, request.byte_size)))
        return pb.CudaSharedMemoryRegisterResponse()


@pytest.fixture
def served(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Regions]]:
    regions = Regions()
    for name, method in {
        "SystemSharedMemoryRegister": regions.register,
        "SystemSharedMemoryStatus": regions.status,
        "SystemSharedMemoryUnregister": regions.unregister,
        "CudaSharedMemoryRegister": regions.cuda_register,
    }.items():
        monkeypatch.setattr(KServeService, name, lambda self, r, c, m=method: m(r, c))
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        models=(ModelSettings(name="tiny", path=str(tiny_onnx)),),
    )
    loop = asyncio.new_event_loop()
    server = InferenceServer(config)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    try:
        yield f"127.0.0.1:{server.http_port}", regions
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(5), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_system_shared_memory_routes_reach_the_servicer_and_answer_as_triton(
    served: tuple[str, Regions],
) -> None:
    url, regions = served
    client = httpclient.InferenceServerClient(url)
    try:
        client.register_system_shared_memory("input", "/k", 256, offset=8)
        assert client.get_system_shared_memory_status() == [
            {"name": "input", "key": "/k", "offset": 8, "byte_size": 256}
        ]
        assert client.get_system_shared_memory_status("input")[0]["name"] == "input"
        with pytest.raises(InferenceServerException) as info:
            client.get_system_shared_memory_status("other")
        assert info.value.status() == "404"
        client.unregister_system_shared_memory("input")
        client.unregister_system_shared_memory()
        client.register_cuda_shared_memory("gpu", base64.b64encode(b"\x01handle"), 0, 512)
    finally:
        client.close()
    assert regions.calls == [
        ("register", ("input", "/k", 8, 256)),
        ("unregister", "input"),
        ("unregister", ""),
        ("cuda", ("gpu", b"\x01handle", 0, 512)),
    ]
