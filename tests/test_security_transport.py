"""Transport limits on the real grpc.aio server: a client that pings too often is disconnected, streams per
connection are capped, and a message over the size limit is refused before it reaches a servicer."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig

pytestmark = pytest.mark.slow


def config_for(model: Path, **values: Any) -> ServerConfig:
    base = ServerConfig(
        host="127.0.0.1", grpc_port=0, metrics_port=-1, models=(ModelSettings(name="tiny", path=str(model)),)
    )
    return dataclasses.replace(base, **values)


async def watch(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamCall[Any, Any]:
    """A health Watch: a call that stays open, answering once and then sending nothing."""
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    call = stub.Watch(health_pb2.HealthCheckRequest())
    await call.read()  # the first answer: the stream is open
    return call  # type: ignore[no-any-return]


def test_a_client_that_pings_too_often_is_disconnected_and_a_normal_one_is_not(tiny_onnx: Path) -> None:
    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx))  # defaults: 5 min between pings, 2 strikes
        await server.start()
        target = f"127.0.0.1:{server.grpc_port}"
        aggressive = [
            ("grpc.keepalive_time_ms", 50),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        async with (
            grpc.aio.insecure_channel(target, options=aggressive) as pinging,
            grpc.aio.insecure_channel(target) as normal,
        ):
            flooding, quiet = await watch(pinging), await watch(normal)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(flooding.read(), timeout=10)  # GOAWAY after the third ping
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not quiet.done()  # the same time without pings: still open
            quiet.cancel()
        await server.stop(5)

    asyncio.run(main())


def test_streams_per_connection_are_capped(tiny_onnx: Path) -> None:
    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx, grpc_max_concurrent_streams=1))
        await server.start()
        target = f"127.0.0.1:{server.grpc_port}"
        own = [("grpc.use_local_subchannel_pool", 1)]  # else both channels share one connection
        async with (
            grpc.aio.insecure_channel(target, options=own) as busy,
            grpc.aio.insecure_channel(target, options=own) as other,
        ):
            open_call = await watch(busy)
            stub = health_pb2_grpc.HealthStub(busy)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)  # waits for a free stream
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            other_stub = health_pb2_grpc.HealthStub(other)  # type: ignore[no-untyped-call]
            assert (await other_stub.Check(health_pb2.HealthCheckRequest(), timeout=10)).status == 1
            open_call.cancel()
        await server.stop(5)

    asyncio.run(main())


def test_a_message_over_the_limit_is_refused_resource_exhausted(tiny_onnx: Path) -> None:
    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx, max_image_bytes=1000, grpc_max_message_bytes=2000))
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Classify(pb.ClassifyRequest(image=b"\0" * 5000), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await server.stop(5)

    asyncio.run(main())
