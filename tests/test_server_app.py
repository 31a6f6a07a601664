"""The in-process server: failures inside the server become INTERNAL and it keeps serving; stop() drains."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from protos import classifier_pb2 as pb
from protos import classifier_pb2_grpc as pb_grpc
from server.app import InferenceServer
from server.config import ModelConfig, ServerConfig


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(buf, "PNG")
    return buf.getvalue()


def config_for(model: Path) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1", grpc_port=0, metrics_port=-1, models=(ModelConfig(name="tiny", path=str(model)),)
    )


def test_backend_and_internal_failures_are_internal_and_serving_goes_on(tiny_onnx: Path) -> None:
    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx))
        await server.start()
        model = server.manager.get("tiny")
        backend = model.backends[0]
        real_infer = backend.infer

        def failing_infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise RuntimeError("device lost")

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
            request = pb.ClassifyRequest(image=png())
            backend.infer = failing_infer  # type: ignore[method-assign]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Classify(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "device lost" in (info.value.details() or "")
            backend.infer = real_infer  # type: ignore[method-assign]
            assert (await stub.Classify(request, timeout=10)).predictions

            # A bug outside the backend (here: in preprocessing) is INTERNAL too, without a traceback.
            preprocessor = model.preprocessor
            model.preprocessor = lambda data: 1 / 0  # type: ignore[assignment,misc]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Classify(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "Traceback" not in (info.value.details() or "")
            replies = [r async for r in stub.ClassifyStream(iter([request]), timeout=10)]
            assert replies[0].error.code == grpc.StatusCode.INTERNAL.value[0]
            model.preprocessor = preprocessor
            assert (await stub.Classify(request, timeout=10)).predictions
        await server.stop(5)

    asyncio.run(main())


def test_stop_turns_health_not_serving_and_finishes_accepted_requests(tiny_onnx: Path) -> None:
    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx))
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
            health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            calls = [stub.Classify(pb.ClassifyRequest(image=png()), timeout=30) for _ in range(20)]
            pending = [asyncio.ensure_future(c) for c in calls]  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            stopping = asyncio.ensure_future(server.stop(30))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            results = await asyncio.gather(*pending, return_exceptions=True)
            await stopping
            # The open health watch does not hold shutdown for the grace period; accepted work does.
            assert time.monotonic() - started < 10
        answered = [r for r in results if isinstance(r, pb.ClassifyResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(answered) + len(refused) == 20
        assert all(r.code() == grpc.StatusCode.UNAVAILABLE for r in refused)
        assert answered  # those the server had accepted were completed

    asyncio.run(main())
