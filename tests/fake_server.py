"""A fake ImageClassifier server with a known service time and capacity, to check the load generator.

A benchmark tool is only trustworthy if it measures a server whose behaviour is known exactly: with
`service_time_s` and `capacity` fixed, the true throughput limit is capacity / service_time_s, and latency
under overload must grow with the backlog. Tests also use it to exercise the client without a model.
It sleeps rather than computes, so it costs no CPU.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Future
from typing import TypeVar

import grpc
import grpc.aio

from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc

LABELS = [str(d) for d in range(10)]
T = TypeVar("T")


class FakeClassifier(pb_grpc.ImageClassifierServicer):
    """Decodes each image (corrupt ones fail with INVALID_ARGUMENT) and "predicts" its mean brightness.

    `capacity` requests are served at once, each taking `service_time_s`; the rest wait in a queue, whose
    time is reported in Timing.queue_us like a real server's. The first `unavailable_first` calls fail with
    UNAVAILABLE, to test retries.
    """

    def __init__(
        self, service_time_s: float = 0.0, capacity: int = 1_000_000, unavailable_first: int = 0
    ) -> None:
        self.service_time_s = service_time_s
        self.capacity = capacity
        self.unavailable_left = unavailable_first
        self.calls = 0
        self._slots: asyncio.Semaphore | None = None

    async def _answer(self, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        if request.model not in ("", "fake"):
            raise _Failure(grpc.StatusCode.NOT_FOUND, f"no model named {request.model!r}")
        arrived = time.perf_counter()
        async with self._slots:
            started = time.perf_counter()
            index = _brightness_class(request.image)
            if self.service_time_s:
                await asyncio.sleep(self.service_time_s)
            finished = time.perf_counter()
        k = min(request.top_k or 5, len(LABELS))
        order = [index] + [i for i in range(len(LABELS)) if i != index]
        scores = [0.91] + [0.01] * (len(LABELS) - 1)
        return pb.ClassifyResponse(
            model="fake",
            version="1",
            predictions=[
                pb.Prediction(index=i, label=LABELS[i], score=scores[r]) for r, i in enumerate(order[:k])
            ],
            timing=pb.Timing(
                queue_us=int((started - arrived) * 1e6),
                compute_us=int((finished - started) * 1e6),
                total_us=int((finished - arrived) * 1e6),
                batch_size=1,
            ),
            request_id=request.request_id or "fake-id",
        )

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ClassifyResponse:
        self.calls += 1
        if self.unavailable_left > 0:
            self.unavailable_left -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        try:
            return await self._answer(request)
        except _Failure as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def ClassifyBatch(
        self, request: pb.ClassifyBatchRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ClassifyBatchResponse:
        self.calls += 1
        results = []
        for image in request.images:
            single = pb.ClassifyRequest(model=request.model, image=image, top_k=request.top_k)
            try:
                results.append(pb.ClassifyResult(response=await self._answer(single)))
            except _Failure as exc:
                results.append(pb.ClassifyResult(error=pb.Error(code=exc.code.value[0], message=exc.message)))
        return pb.ClassifyBatchResponse(results=results)

    async def ClassifyStream(
        self,
        request_iterator: AsyncIterator[pb.ClassifyRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        async for request in request_iterator:
            self.calls += 1
            try:
                response = await self._answer(request)
                yield pb.ClassifyStreamResponse(request_id=request.request_id, response=response)
            except _Failure as exc:
                error = pb.Error(code=exc.code.value[0], message=exc.message)
                yield pb.ClassifyStreamResponse(request_id=request.request_id, error=error)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListModelsResponse:
        info = pb.ModelInfo(
            name="fake",
            versions=[pb.ModelVersionInfo(version="1", state="READY")],
            labels=LABELS,
            platform="fake",
            max_batch_size=0,
            input_shape=[1, 8, 8],
            is_default=True,
        )
        return pb.ListModelsResponse(models=[info])


class _Failure(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _brightness_class(data: bytes) -> int:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            pixels = np.asarray(img.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _Failure(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode the image: {exc}") from None
    return min(int(pixels.mean() / 25.6), 9)


class FakeServer:
    """Runs a FakeClassifier on its own event loop in a background thread, on a free local port.

    with FakeServer(service_time_s=0.02, capacity=1) as server:
        client = Client(server.target)
    """

    def __init__(
        self,
        servicer: FakeClassifier | None = None,
        *,
        service_time_s: float = 0.0,
        capacity: int = 1_000_000,
        unavailable_first: int = 0,
        tls_key_and_cert: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.servicer = servicer or FakeClassifier(service_time_s, capacity, unavailable_first)
        self._tls = tls_key_and_cert
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-server", daemon=True)
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self._thread.start()
        self.port = self._call(self._start()).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._server.stop(grace=None)).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> int:
        self._server = grpc.aio.server()
        pb_grpc.add_ImageClassifierServicer_to_server(self.servicer, self._server)  # type: ignore[no-untyped-call]
        if self._tls is None:
            port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials([self._tls])
            port = self._server.add_secure_port("127.0.0.1:0", credentials)
        await self._server.start()
        return port

    def _call(self, coro: Coroutine[object, object, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)
