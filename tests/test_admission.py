"""Admission before work: a request for a model whose queue is full is refused before its image is decoded
or its tensor decoded, on both APIs; the places a request claims are given back when it fails early."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from support.tiny_model import write_tiny_onnx

from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.protos import grpc_service_pb2 as kpb
from resnet_serve.protos import grpc_service_pb2_grpc as kpb_grpc
from resnet_serve.runtime.base import Backend, BackendInfo, TensorSpec
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.batching.batcher import DynamicBatcher
from resnet_serve.server.config import BatchingConfig, ModelSettings, ServerConfig
from resnet_serve.server.errors import ServeError
from resnet_serve.server.image.service import largest_result
from resnet_serve.server.kserve import service as kserve_service
from resnet_serve.server.observability.metrics import ServerMetrics

F32 = np.dtype(np.float32)


class GatedBackend(Backend):
    """y = x; each batch waits for the gate, so the queue stays full while a test floods it."""

    def __init__(self, gate: threading.Event) -> None:
        self.info = BackendInfo("fake", [TensorSpec("x", F32, (-1, 2))], [TensorSpec("y", F32, (-1, 2))], 8)
        self.gate = gate

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        return {"y": inputs["x"]}


def batcher(gate: threading.Event, max_queue_size: int) -> DynamicBatcher:
    metrics = ServerMetrics(registry=CollectorRegistry()).model("m", "1")
    config = BatchingConfig(max_batch_size=1, max_queue_size=max_queue_size)
    return DynamicBatcher("m", "1", [GatedBackend(gate)], config, metrics)


def x() -> dict[str, np.ndarray]:
    return {"x": np.ones((1, 2), dtype=np.float32)}


def test_reserved_places_count_against_the_queue_and_are_given_back() -> None:
    gate = threading.Event()
    b = batcher(gate, max_queue_size=3)

    async def main() -> None:
        first = b.reserve(2)
        with pytest.raises(ServeError) as info:
            b.reserve(2)  # 2 claimed + 2 > 3: all or nothing
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.outcome == "queue_full"
        second = b.reserve()  # the third place
        with pytest.raises(ServeError):
            await b.submit(x())  # without a ticket: no place left
        with pytest.raises(ServeError):
            b.reserve()
        second.release()  # e.g. its image did not decode: its place is free again
        b.reserve().release()
        queued = [asyncio.ensure_future(b.submit(x(), ticket=first)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ServeError):
            b.reserve(3)  # one of the ticket's places is now a queued request (the other runs)
        gate.set()
        results = await asyncio.gather(*queued)
        assert [r.outputs["y"].tolist() for r in results] == [[[1.0, 1.0]]] * 2
        first.release()  # a filled ticket holds nothing to give back
        b.reserve(3).release()

    asyncio.run(main())
    b.close()
    assert b.join(5)


def test_concurrent_reservations_never_admit_more_than_the_queue_holds() -> None:
    gate = threading.Event()
    b = batcher(gate, max_queue_size=5)
    admitted: list[int] = []
    refused: list[int] = []

    def claim(i: int) -> None:
        for _ in range(200):
            try:
                ticket = b.reserve()
            except ServeError:
                refused.append(i)
                continue
            admitted.append(i)
            time.sleep(0.0005)
            admitted.remove(i)  # before the place is given back, so `admitted` never overstates
            ticket.release()

    peak: list[int] = []

    def watch() -> None:
        while any(t.is_alive() for t in threads):
            peak.append(len(admitted))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    watch()
    for t in threads:
        t.join()
    assert max(peak) <= 5 and refused
    b.reserve(5).release()  # every place was given back
    gate.set()
    b.close()


# ------------------------------------------------------------------------------------------- both APIs


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(buf, "PNG")
    return buf.getvalue()


def flooded(
    tmp_path: Path, body: Callable[[InferenceServer, grpc.aio.Channel, list[int]], Awaitable[None]]
) -> None:
    """A server whose one model takes 1 request per batch, queues at most 2, and computes 30 ms each; the
    body floods it. `decodes` counts the images the server decoded."""
    model_file = write_tiny_onnx(tmp_path / "tiny.onnx")
    batching = BatchingConfig(max_batch_size=1, max_queue_size=2)
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        models=(ModelSettings(name="tiny", path=str(model_file), batching=batching),),
    )

    async def main() -> None:
        server = InferenceServer(config)
        await server.start()
        model = server.manager.get("tiny")
        backend = model.backends[0]
        real_infer = backend.infer
        decode = model.preprocessor
        assert decode is not None
        decodes: list[int] = []

        def slow_infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            time.sleep(0.03)
            return real_infer(inputs)

        def counted_decode(data: bytes) -> np.ndarray:
            decodes.append(1)
            return decode(data)

        backend.infer = slow_infer  # type: ignore[method-assign]
        model.preprocessor = counted_decode  # type: ignore[assignment]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                await body(server, channel, decodes)
        finally:
            await server.stop(5)

    asyncio.run(main())


def outcomes(results: list[Any]) -> tuple[list[Any], list[grpc.aio.AioRpcError]]:
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(r.code() == grpc.StatusCode.UNAVAILABLE for r in refused), refused
    assert all("queue is full" in (r.details() or "") for r in refused)
    return [r for r in results if not isinstance(r, BaseException)], refused


@pytest.mark.slow
def test_image_requests_refused_for_a_full_queue_are_never_decoded(tmp_path: Path) -> None:
    async def body(server: InferenceServer, channel: grpc.aio.Channel, decodes: list[int]) -> None:
        stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
        request = pb.ClassifyRequest(image=png())
        calls = [stub.Classify(request, timeout=30) for _ in range(40)]
        answered, refused = outcomes(await asyncio.gather(*calls, return_exceptions=True))  # type: ignore[arg-type]
        assert refused and answered
        assert all(a.predictions for a in answered)
        assert len(decodes) == len(answered)  # each accepted image decoded once, no refused one at all
        # A batch of images asks for its places all at once: refused whole while the queue is full.
        decodes.clear()
        blockers = [stub.Classify(request, timeout=30) for _ in range(6)]
        pending = [asyncio.ensure_future(c) for c in blockers]  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        batch = await stub.ClassifyBatch(pb.ClassifyBatchRequest(images=[png()] * 3), timeout=30)
        await asyncio.gather(*pending, return_exceptions=True)
        errors = [r.error for r in batch.results if r.HasField("error")]
        if errors:  # refused: none of its images was decoded
            assert len(errors) == 3 and "queue is full" in errors[0].message
        assert len(decodes) <= 6 + 3 - len(errors)
        # A batch of more requests than the queue holds (5 images, one per batch, queue of 2) on an idle
        # server claims the whole queue, so it is not refused outright: at least two of its images run.
        batch = await stub.ClassifyBatch(pb.ClassifyBatchRequest(images=[png()] * 5), timeout=30)
        answered_images = [r for r in batch.results if r.HasField("response")]
        assert len(answered_images) >= 2
        assert all("queue is full" in r.error.message for r in batch.results if r.HasField("error"))

    flooded(tmp_path, body)


@pytest.mark.slow
def test_kserve_requests_refused_for_a_full_queue_are_never_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decode = kserve_service.decode_request  # type: ignore[attr-defined]
    tensor_decodes: list[int] = []

    async def counted(*args: Any) -> Any:
        tensor_decodes.append(1)
        return await real_decode(*args)

    monkeypatch.setattr(kserve_service, "decode_request", counted)

    async def body(server: InferenceServer, channel: grpc.aio.Channel, decodes: list[int]) -> None:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        image = png()
        images = kpb.ModelInferRequest(
            model_name="tiny",
            inputs=[kpb.ModelInferRequest.InferInputTensor(name="input", datatype="BYTES", shape=[1])],
            raw_input_contents=[struct.pack("<I", len(image)) + image],
        )
        tensors = kpb.ModelInferRequest(
            model_name="tiny",
            inputs=[
                kpb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1, 8, 8])
            ],
            raw_input_contents=[np.zeros((1, 1, 8, 8), np.float32).tobytes()],
        )
        for request in (images, tensors):
            decodes.clear()
            tensor_decodes.clear()
            calls = [stub.ModelInfer(request, timeout=30) for _ in range(40)]
            answered, refused = outcomes(await asyncio.gather(*calls, return_exceptions=True))  # type: ignore[arg-type]
            assert refused and answered
            assert all(a.outputs[0].name == "logits" for a in answered)
            assert len(tensor_decodes) == len(answered)
            assert len(decodes) == (len(answered) if request is images else 0)

    flooded(tmp_path, body)


def test_a_classify_batch_whose_answer_could_exceed_the_grpc_limit_is_refused_before_any_decoding(
    tmp_path: Path,
) -> None:
    # Each image's result holds top_k labels: many small images at a large top_k make an answer far larger
    # than the request, which gRPC would fail to send after every image was computed and counted.
    model_file = write_tiny_onnx(tmp_path / "tiny.onnx")
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        max_image_bytes=16 * 1024,
        grpc_max_message_bytes=64 * 1024,
        models=(ModelSettings(name="tiny", path=str(model_file)),),
    )

    async def main() -> None:
        server = InferenceServer(config)
        await server.start()
        model = server.manager.get("tiny")
        decode = model.preprocessor
        assert decode is not None
        decodes: list[int] = []

        def counted_decode(data: bytes) -> np.ndarray:
            decodes.append(1)
            return decode(data)

        model.preprocessor = counted_decode  # type: ignore[assignment]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
                image = png()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ClassifyBatch(pb.ClassifyBatchRequest(images=[image] * 400, top_k=10))
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "the answer to 400 images at top_k=10 could reach" in (info.value.details() or "")
                assert "grpc_max_message_bytes=65536" in (info.value.details() or "")
                assert decodes == []
                # What fits is answered, and its real size is within the bound that admitted it.
                answer = await stub.ClassifyBatch(pb.ClassifyBatchRequest(images=[image] * 20, top_k=10))
                assert len(answer.results) == 20 and all(r.HasField("response") for r in answer.results)
                call_id = answer.results[0].response.request_id.rsplit("/", 1)[0]
                assert answer.ByteSize() <= 20 * largest_result(model, 10, call_id)
        finally:
            await server.stop(5)

    asyncio.run(main())
