"""Our image API (protos/classifier.proto): encoded images in, top-k labels with softmax scores out.

Decoding runs on a thread pool, inference on the model's batcher; the event loop only routes. Every failure
leaves here as a gRPC status (unary RPCs) or an Error entry (batch and stream), so no request is ever left
without an answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from resnet_serve.formats.errors import InvalidInput
from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.server.batching.batcher import BatchResult
from resnet_serve.server.errors import (
    ServeError,
    abort_with,
    internal,
    invalid_argument,
    outcome_of,
    refusal_outcome,
)
from resnet_serve.server.inflight import InFlight
from resnet_serve.server.models.manager import ModelManager, ServedModel
from resnet_serve.server.observability.logging import (
    access_log,
    echo_request_id,
    request_scope,
    resolve_request_id,
)

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
Context = grpc.aio.ServicerContext[object, object]


def _unexpected(rpc: str) -> ServeError:
    """A bug or an unforeseen failure: logged with its traceback, answered INTERNAL without one."""
    log.exception("%s failed unexpectedly", rpc)
    return internal(f"{rpc} failed inside the server; the server log has the details")


def _refused(name: str, version: str, error: ServeError, start: float) -> None:
    """The access-log line of a request refused before it reached a model version."""
    access_log(name, version, refusal_outcome(error), time.perf_counter() - start, detail=error.message)


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1e6))


def top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most probable classes of one row of logits, by softmax probability, ties by lower index."""
    z = logits.astype(np.float64)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in order]


class ImageClassifierService(pb_grpc.ImageClassifierServicer):
    def __init__(self, manager: ModelManager, pool: Executor, in_flight: InFlight | None = None) -> None:
        self._manager = manager
        self._pool = pool
        self._in_flight = in_flight or InFlight()

    # ------------------------------------------------------------------------------------------- helpers

    def _model(self, name: str, version: str) -> ServedModel:
        model = self._manager.get(name, version)
        if model.preprocessor is None:
            raise ServeError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {model.name!r} has no preprocessing metadata; send tensors with the KServe API",
            )
        return model

    @staticmethod
    def _k(model: ServedModel, requested: int) -> int:
        classes = len(model.labels)
        if requested == 0:
            return min(DEFAULT_TOP_K, classes)
        if requested > classes:
            raise invalid_argument(
                f"top_k must be between 1 and {classes} (the number of classes of {model.name!r}), "
                f"or 0 for {min(DEFAULT_TOP_K, classes)}; got {requested}"
            )
        return requested

    def _response(
        self, model: ServedModel, logits: np.ndarray, k: int, request_id: str, timing: pb.Timing
    ) -> pb.ClassifyResponse:
        predictions = [
            pb.Prediction(index=i, label=model.labels[i], score=score) for i, score in top_k(logits, k)
        ]
        return pb.ClassifyResponse(
            model=model.name,
            version=model.version,
            predictions=predictions,
            timing=timing,
            request_id=request_id,
        )

    async def _classify(
        self, request: pb.ClassifyRequest, context: Context, request_id: str
    ) -> pb.ClassifyResponse:
        """One image, start to finish; raises ServeError (metrics are recorded here either way)."""
        start = time.perf_counter()
        try:
            model = self._model(request.model, request.version)
        except ServeError as exc:
            _refused(request.model, request.version, exc, start)
            raise
        metrics = model.metrics
        with metrics.in_flight():
            preprocess_s: float | None = None
            try:
                k = self._k(model, request.top_k)
                loop = asyncio.get_running_loop()
                assert model.preprocessor is not None
                try:
                    x = await loop.run_in_executor(self._pool, model.preprocessor, request.image)
                except InvalidInput as exc:
                    raise invalid_argument(str(exc)) from None
                preprocess_s = time.perf_counter() - start
                result: BatchResult = await model.infer(
                    {model.info.inputs[0].name: x[None]}, context.time_remaining()
                )
                logits = result.outputs[model.info.outputs[0].name][0]
                total = time.perf_counter() - start
                timing = pb.Timing(
                    queue_us=_us(result.queue_s),
                    preprocess_us=_us(preprocess_s),
                    compute_us=_us(result.compute_s),
                    total_us=_us(total),
                    batch_size=result.batch_size,
                )
                response = self._response(model, logits, k, request_id, timing)
            except BaseException as exc:
                total = time.perf_counter() - start
                outcome = outcome_of(exc)
                metrics.request_done(outcome, total, preprocess_s=preprocess_s)
                access_log(model.name, model.version, outcome, total, detail=getattr(exc, "message", None))
                raise
            metrics.request_done("success", total, result.queue_s, preprocess_s, result.compute_s)
            access_log(model.name, model.version, "success", total, result.batch_size)
            return response

    # ---------------------------------------------------------------------------------------------- RPCs

    async def Classify(self, request: pb.ClassifyRequest, context: Context) -> pb.ClassifyResponse:
        request_id = echo_request_id(context, request.request_id)
        with request_scope(request_id):
            try:
                return await self._classify(request, context, request_id)
            except ServeError as exc:
                error = exc
            except Exception:
                error = _unexpected("Classify")
            await abort_with(context, error)

    async def ClassifyBatch(
        self, request: pb.ClassifyBatchRequest, context: Context
    ) -> pb.ClassifyBatchResponse:
        request_id = echo_request_id(context, request.request_id)
        with request_scope(request_id):
            start = time.perf_counter()
            try:
                model = self._model(request.model, request.version)
                k = self._k(model, request.top_k)
                if not request.images:
                    raise invalid_argument("ClassifyBatch needs at least one image")
            except ServeError as exc:
                _refused(request.model, request.version, exc, start)
                await abort_with(context, exc)
            with model.metrics.in_flight():
                try:
                    results, failures, batch_size = await self._classify_batch(
                        model, k, list(request.images), context, request_id
                    )
                except Exception:
                    error = _unexpected("ClassifyBatch")
                    access_log(model.name, model.version, error.outcome, time.perf_counter() - start)
                    await abort_with(context, error)
            # One access-log line for the whole call: its images are counted one by one in the metrics.
            total = time.perf_counter() - start
            if failures:
                detail = f"{len(failures)} of {len(results)} images failed; first: {failures[0].message}"
                access_log(model.name, model.version, failures[0].outcome, total, batch_size, detail)
            else:
                access_log(model.name, model.version, "success", total, batch_size)
        return pb.ClassifyBatchResponse(results=results)

    async def _classify_batch(
        self, model: ServedModel, k: int, images: Sequence[bytes], context: Context, request_id: str
    ) -> tuple[list[pb.ClassifyResult], list[ServeError], int | None]:
        """Every image's result, the failures in image order, and the largest batch an image ran in."""
        start = time.perf_counter()
        failures: dict[int, ServeError] = {}
        batch_sizes: list[int] = []
        loop = asyncio.get_running_loop()
        assert model.preprocessor is not None
        preprocessor = model.preprocessor

        async def prepare(data: bytes) -> tuple[np.ndarray | ServeError, float]:
            try:
                x = await loop.run_in_executor(self._pool, preprocessor, data)
            except InvalidInput as exc:
                return invalid_argument(str(exc)), time.perf_counter() - start
            return x, time.perf_counter() - start

        prepared = await asyncio.gather(*(prepare(data) for data in images))
        results: list[pb.ClassifyResult | None] = [None] * len(images)
        good = [i for i, (x, _) in enumerate(prepared) if not isinstance(x, ServeError)]
        for i, (x, pre_s) in enumerate(prepared):
            if isinstance(x, ServeError):
                failures[i] = x
                results[i] = pb.ClassifyResult(
                    error=pb.Error(code=x.code.value[0], message=f"image {i}: {x.message}")
                )
                model.metrics.request_done(x.outcome, pre_s, preprocess_s=pre_s)
        # Valid images go as requests of up to max_batch_size rows each, so one call can batch with others.
        step = model.batcher.max_batch_size
        chunks = [good[i : i + step] for i in range(0, len(good), step)]

        async def run(chunk: list[int]) -> None:
            rows = np.stack([prepared[i][0] for i in chunk])  # type: ignore[misc]
            pre_s = max(prepared[i][1] for i in chunk)
            try:
                result = await model.infer({model.info.inputs[0].name: rows}, context.time_remaining())
            except ServeError as exc:
                model.metrics.request_done(exc.outcome, time.perf_counter() - start, preprocess_s=pre_s)
                for i in chunk:
                    failures[i] = exc
                    results[i] = pb.ClassifyResult(
                        error=pb.Error(code=exc.code.value[0], message=exc.message)
                    )
                return
            total = time.perf_counter() - start
            batch_sizes.append(result.batch_size)
            model.metrics.request_done(
                "success", total, result.queue_s, pre_s, result.compute_s, inferences=len(chunk)
            )
            logits = result.outputs[model.info.outputs[0].name]
            for row, i in enumerate(chunk):
                timing = pb.Timing(
                    queue_us=_us(result.queue_s),
                    preprocess_us=_us(prepared[i][1]),
                    compute_us=_us(result.compute_s),
                    total_us=_us(total),
                    batch_size=result.batch_size,
                )
                response = self._response(model, logits[row], k, f"{request_id}/{i}", timing)
                results[i] = pb.ClassifyResult(response=response)

        await asyncio.gather(*(run(chunk) for chunk in chunks))
        done = [r if r is not None else pb.ClassifyResult() for r in results]
        return done, [failures[i] for i in sorted(failures)], max(batch_sizes, default=None)

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyRequest], context: Context
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        out: asyncio.Queue[pb.ClassifyStreamResponse | BaseException | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        # An item's own request_id wins; one without gets "<stream id>/<n>", the stream id being the
        # stream's x-request-id metadata (or a new id), so a client can find a whole stream in the logs.
        stream_id = echo_request_id(context)

        async def one(request: pb.ClassifyRequest, n: int) -> None:
            request_id = resolve_request_id(request.request_id, f"{stream_id}/{n}")
            try:
                with request_scope(request_id), self._in_flight:
                    response = await self._classify(request, context, request_id)
            except Exception as exc:
                failure = exc if isinstance(exc, ServeError) else _unexpected("ClassifyStream")
                error = pb.Error(code=failure.code.value[0], message=failure.message)
                await out.put(pb.ClassifyStreamResponse(request_id=request_id, error=error))
            else:
                await out.put(pb.ClassifyStreamResponse(request_id=request_id, response=response))

        async def read() -> None:
            try:
                n = 0
                async for request in request_iterator:
                    task = asyncio.create_task(one(request, n))
                    n += 1
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                await out.put(None)
            except BaseException as exc:  # the stream broke: let the writer end the RPC
                await out.put(exc)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, asyncio.CancelledError):
                        return
                    if isinstance(item, DecodeError):  # else gRPC answers UNKNOWN and logs a traceback
                        await abort_with(context, invalid_argument(f"malformed request: {item}"))
                    raise item
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        manager = self._manager
        by_name: dict[str, list[pb.ModelVersionInfo]] = {}
        for status in manager.statuses():
            by_name.setdefault(status.name, []).append(
                pb.ModelVersionInfo(version=status.version, state=str(status.state), reason=status.reason)
            )
        models = []
        default = manager.default_model
        for name, versions in by_name.items():
            info = pb.ModelInfo(name=name, versions=versions, is_default=name == default)
            loaded = manager.versions(name) if name in manager.names() else []
            if loaded:
                latest = loaded[-1]
                info.labels.extend(latest.labels)
                info.platform = latest.info.platform
                info.max_batch_size = latest.batcher.max_batch_size
                if latest.info.inputs:
                    info.input_shape.extend(latest.info.inputs[0].shape[1:])
            models.append(info)
        return pb.ListModelsResponse(models=models)
