"""The in-process server: failures inside the server become INTERNAL and it keeps serving; stop() drains."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from support.tiny_model import write_tiny_onnx

from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.errors import ServeError


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(buf, "PNG")
    return buf.getvalue()


def config_for(model: Path) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        models=(ModelSettings(name="tiny", path=str(model)),),
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


def test_shutdown_waits_for_a_kserve_stream_request_not_yet_in_the_batcher(tiny_onnx: Path) -> None:
    from resnet_serve.protos import grpc_service_pb2 as kpb
    from resnet_serve.protos import grpc_service_pb2_grpc as kpb_grpc

    entered, release = threading.Event(), threading.Event()

    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx))
        await server.start()
        model = server.manager.get("tiny")
        decode = model.preprocessor
        assert decode is not None

        def held_decode(data: bytes) -> np.ndarray:
            entered.set()
            release.wait(30)
            return decode(data)

        model.preprocessor = held_decode  # type: ignore[assignment]
        image = png()
        tensor = kpb.ModelInferRequest.InferInputTensor(name="input", datatype="BYTES", shape=[1])
        request = kpb.ModelInferRequest(
            model_name="tiny", id="held", inputs=[tensor],
            raw_input_contents=[struct.pack("<I", len(image)) + image],
        )  # fmt: skip
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                stub = kpb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
                call = stub.ModelStreamInfer(iter([request]), timeout=30)
                assert await asyncio.to_thread(entered.wait, 10)
                assert server.ctx.in_flight.count == 1  # decoding, not yet queued: the batcher is idle
                stopping = asyncio.ensure_future(server.stop(30))
                await asyncio.sleep(1.5)  # longer than the 1 s grpc's own stop gives open calls
                assert not stopping.done()
                release.set()
                answers = [answer async for answer in call]
                await stopping
        finally:
            release.set()
            await server.stop(5)  # returns at once when already stopped
        assert [(a.error_message, a.infer_response.id) for a in answers] == [("", "held")]
        assert answers[0].infer_response.outputs[0].name == "logits"

    asyncio.run(main())


def test_health_stays_serving_after_an_unload_and_not_after_a_failed_load(tmp_path: Path) -> None:
    model_file = write_tiny_onnx(tmp_path / "tiny.onnx")

    async def main() -> None:
        server = InferenceServer(config_for(model_file))
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]

            async def status() -> int:
                await asyncio.sleep(0.05)  # health is updated by a task the readiness change starts
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                return int(reply.status)

            await server.manager.unload("tiny")
            assert await status() == health_pb2.HealthCheckResponse.SERVING
            model_file.write_bytes(b"no longer onnx")
            with pytest.raises(ServeError):
                await server.manager.load("tiny")
            assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        await server.stop(5)

    asyncio.run(main())


def serving_what_loads(**models: Any) -> ServerConfig:
    """A loopback server on free ports with exit_on_error false, serving `models` (models=..., or
    model_repository=...)."""
    return ServerConfig(
        host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=-1, exit_on_error=False, **models
    )


def test_grpc_health_and_model_ready_series_follow_readiness_with_a_model_that_failed(
    tmp_path: Path,
) -> None:
    """exit_on_error false and a model that fails to load: every health name says NOT_SERVING, as
    ServerReady does, and the failed version has a model_ready 0 series; once it loads, all SERVING."""
    from resnet_serve.protos import grpc_service_pb2 as kpb
    from resnet_serve.protos import grpc_service_pb2_grpc as kpb_grpc

    good = write_tiny_onnx(tmp_path / "good.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    config = serving_what_loads(
        models=(ModelSettings(name="tiny", path=str(good)), ModelSettings(name="broken", path=str(broken)))
    )
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

    async def main() -> None:
        server = InferenceServer(config)
        await server.start()
        names = ["", *server.services]
        assert len(names) == 3
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
            kserve = kpb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

            async def statuses() -> list[int]:
                await asyncio.sleep(0.05)  # a readiness change updates health from a task
                replies = [await health.Check(health_pb2.HealthCheckRequest(service=n)) for n in names]
                return [int(r.status) for r in replies]

            def ready_series(model: str) -> str:
                lines = server.metrics.render().decode().splitlines()
                return next(x for x in lines if x.startswith(f'resnet_serve_model_ready{{model="{model}"'))

            assert not (await kserve.ServerReady(kpb.ServerReadyRequest())).ready
            assert await statuses() == [not_serving] * 3
            assert ready_series("broken") == 'resnet_serve_model_ready{model="broken",version="1"} 0.0'
            write_tiny_onnx(broken)  # fixed: loading it through model control makes the server ready
            await server.manager.load("broken")
            assert (await kserve.ServerReady(kpb.ServerReadyRequest())).ready
            assert await statuses() == [serving] * 3
            assert ready_series("broken").endswith(" 1.0")
            broken.write_bytes(b"broken again")
            with pytest.raises(ServeError):
                await server.manager.load("broken")  # the old version keeps serving: still ready
            assert await statuses() == [serving] * 3
            await server.manager.unload("tiny")  # unloaded on request: nothing is meant to serve it
            assert await statuses() == [serving] * 3
            await server.stop(5)
            assert [int(server.health._server_status[n]) for n in names] == [not_serving] * 3

    asyncio.run(main())


def test_a_model_whose_configuration_fails_has_a_model_ready_series_at_zero(tmp_path: Path) -> None:
    """No version could be read: the series carries the unknown-version label until a load succeeds."""
    repo = tmp_path / "repo"
    (repo / "bad").mkdir(parents=True)
    (repo / "bad" / "config.pbtxt").write_text("this is { not a config")
    write_tiny_onnx(repo / "good" / "1" / "model.onnx")
    config = serving_what_loads(model_repository=str(repo))

    async def main() -> None:
        server = InferenceServer(config)
        await server.start()
        text = server.metrics.render().decode()
        assert 'resnet_serve_model_ready{model="bad",version="_unknown"} 0.0' in text
        assert not server.ctx.ready()
        (repo / "bad" / "config.pbtxt").unlink()
        write_tiny_onnx(repo / "bad" / "1" / "model.onnx")
        await server.manager.load("bad")
        text = server.metrics.render().decode()
        assert 'model="bad",version="_unknown"' not in text
        assert 'resnet_serve_model_ready{model="bad",version="1"} 1.0' in text
        await server.stop(5)

    asyncio.run(main())


def test_serve_freezes_what_start_up_built_so_the_process_exits_promptly(tiny_onnx: Path) -> None:
    """The interpreter's collections at exit walked every start-up object: 0.3-2.6 s after "stopped".
    (The exit itself is timed by lab/exit_latency.py, not here.)"""
    import gc
    import os
    import signal

    from resnet_serve.server.app import serve

    frozen: list[int] = []

    async def stop_once_frozen() -> None:
        end = time.monotonic() + 30
        while gc.get_freeze_count() == 0 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        frozen.append(gc.get_freeze_count())
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: the drain, as in production

    async def main() -> int:
        watcher = asyncio.create_task(stop_once_frozen())
        code = await serve(config_for(tiny_onnx))
        await watcher
        return code

    assert gc.get_freeze_count() == 0
    try:
        assert asyncio.run(main()) == 0
    finally:
        gc.unfreeze()
    assert frozen[0] > 10_000, frozen
