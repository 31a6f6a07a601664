"""The gRPC server adds its services as generic handlers only (server/registration.py): grpc.aio's accept
loop waits on one pending call per registered method for every RPC it accepts, so registering 27 methods
cost every request 28 futures' worth of asyncio work. Every service still answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.registration import GenericOnly

pytestmark = pytest.mark.slow


class _Recorder:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


def test_generic_only_passes_generic_handlers_and_drops_registered_methods() -> None:
    server = _Recorder()
    generic = GenericOnly(server)  # type: ignore[arg-type]
    handler = grpc.method_handlers_generic_handler("x.Service", {})
    generic.add_generic_rpc_handlers((handler,))
    generic.add_registered_method_handlers("x.Service", {})
    assert server.generic == [handler] and server.registered == []


def test_the_server_registers_no_method_so_every_service_answers_through_its_generic_handler(
    tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[str] = []
    real = grpc.aio._server.Server.add_registered_method_handlers  # type: ignore[attr-defined]

    def record(self: Any, service: str, handlers: Any) -> None:
        registered.append(service)
        real(self, service, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", record)  # type: ignore[attr-defined]
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=-1,
        metrics_port=-1,
        models=(ModelSettings(name="tiny", path=str(tiny_onnx)),),
    )

    async def main() -> None:
        server = InferenceServer(config)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                kserve = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
                assert (await kserve.ServerReady(pb.ServerReadyRequest(), timeout=10)).ready
                x = np.zeros((1, 1, 8, 8), np.float32)
                tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
                request = pb.ModelInferRequest(
                    model_name="tiny", inputs=[tensor], raw_input_contents=[x.tobytes()]
                )
                response = await kserve.ModelInfer(request, timeout=10)
                assert list(response.outputs[0].shape) == [1, 10]
                check = health_pb2_grpc.HealthStub(channel).Check
                answer = await check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
                names = {s.name async for r in reflect for s in r.list_services_response.service}
                assert {"inference.GRPCInferenceService", "resnetserve.v1.ImageClassifier"} <= names
                assert "grpc.health.v1.Health" in names
        finally:
            await server.stop(1)

    asyncio.run(main())
    assert registered == []
