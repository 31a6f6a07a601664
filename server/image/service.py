"""Our image API (protos/classifier.proto): encoded images in, top-k labels with softmax scores out.

Decoding runs on a thread pool, inference on the model's batcher (through server/request.py, as KServe's);
the event loop only routes. Every failure leaves as a gRPC status (server/errors.py's boundary) or an Error
entry (batch and stream), so no request is ever left without an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor

import grpc
import numpy as np

from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.server.batching.batcher import Ticket
from resnet_serve.server.decode.budget import preprocess_each, preprocess_images
from resnet_serve.server.errors import (
    ServeError,
    boundary,
    invalid_argument,
    status_of,
    stream_boundary,
    too_large,
)
from resnet_serve.server.frontend import CallContext
from resnet_serve.server.inflight import InFlight
from resnet_serve.server.models.manager import ModelManager
from resnet_serve.server.models.served import ServedModel
from resnet_serve.server.observability.logging import request_scope, resolve_request_id
from resnet_serve.server.outcomes import Outcome
from resnet_serve.server.request import Call
from resnet_serve.server.streams import answer_concurrently
from resnet_serve.server.transport import field_bytes

DEFAULT_TOP_K = 5
Context = CallContext


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


def largest_result(model: ServedModel, k: int, request_id: str) -> int:
    """The most bytes one image's ClassifyResult of `model` can take at top `k` in a ClassifyBatchResponse:
    the longest labels, the largest numbers, the per-image request id."""
    longest = max(model.labels, key=lambda label: len(label.encode()), default="")
    worst = pb.ClassifyResult(
        response=pb.ClassifyResponse(
            model=model.name,
            version=model.version,
            predictions=[pb.Prediction(index=len(model.labels), label=longest, score=1.0)] * k,
            timing=pb.Timing(
                queue_us=2**64 - 1,
                preprocess_us=2**64 - 1,
                compute_us=2**64 - 1,
                total_us=2**64 - 1,
                batch_size=2**32 - 1,
            ),
            request_id=f"{request_id}/{2**32}",
        )
    )
    return field_bytes(worst.ByteSize())  # with its tag and length in `results`


class ImageClassifierService(pb_grpc.ImageClassifierServicer):
    def __init__(
        self,
        manager: ModelManager,
        pool: Executor,
        in_flight: InFlight | None = None,
        max_answer_bytes: int | None = None,
    ) -> None:
        """`max_answer_bytes`: the largest answer the transport sends (gRPC's max send message length; None:
        no limit, as over HTTP): a ClassifyBatch whose answer could exceed it is refused before any work."""
        self._manager = manager
        self._pool = pool
        self._in_flight = in_flight or InFlight()
        self._max_answer = max_answer_bytes

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
        """The number of labels to answer: 0 asks for the default; more than the model has classes gets
        them all, as KServe's classification extension caps `class_count` (and TorchServe's topk)."""
        classes = len(model.labels)
        if requested == 0:
            return min(DEFAULT_TOP_K, classes)
        return min(requested, classes)

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
        self, request: pb.ClassifyRequest, context: Context, request_id: str, rpc: str
    ) -> pb.ClassifyResponse:
        """One image, start to finish; raises ServeError (metrics are recorded either way)."""
        with Call(
            rpc, request.model, request.version, lambda: self._model(request.model, request.version)
        ) as call:
            model = call.model
            k = self._k(model, request.top_k)
            call.admit()  # a place in the queue first: a full queue refuses before the image is decoded
            assert model.preprocessor is not None
            (x,) = await preprocess_images(
                model.preprocessor, self._pool, [request.image], context.time_remaining()
            )
            call.preprocess_s = preprocess_s = time.perf_counter() - call.start
            image = model.image_input(x[None])
            result = await call.infer({model.info.inputs[0].name: image}, context.time_remaining())
            logits = model.output_rows(result.outputs[model.info.outputs[0].name], 1)[0]
            timing = pb.Timing(
                queue_us=_us(result.queue_s),
                preprocess_us=_us(preprocess_s),
                compute_us=_us(result.compute_s),
                total_us=_us(call.elapsed()),
                batch_size=result.batch_size,
            )
            return self._response(model, logits, k, request_id, timing)

    # ---------------------------------------------------------------------------------------------- RPCs

    @boundary
    async def Classify(self, request: pb.ClassifyRequest, context: Context) -> pb.ClassifyResponse:
        request_id = context.echo_request_id(request.request_id)
        with request_scope(request_id):
            return await self._classify(request, context, request_id, "Classify")

    @boundary
    async def ClassifyBatch(
        self, request: pb.ClassifyBatchRequest, context: Context
    ) -> pb.ClassifyBatchResponse:
        def admit() -> ServedModel:  # a request that cannot run is refused before it counts
            model = self._model(request.model, request.version)
            k = self._k(model, request.top_k)
            if not request.images:
                raise invalid_argument("ClassifyBatch needs at least one image")
            if self._max_answer is not None:
                bound = len(request.images) * largest_result(model, k, request_id)
                if bound > self._max_answer:
                    raise too_large(
                        f"the answer to {len(request.images)} images at top_k={k} could reach {bound} bytes; "
                        f"the limit is grpc_max_message_bytes={self._max_answer} (send fewer images per "
                        "call or ask for fewer labels)"
                    )
            return model

        request_id = context.echo_request_id(request.request_id)
        # One access-log line for the whole call: its images are counted one by one in the metrics.
        with (
            request_scope(request_id),
            Call("ClassifyBatch", request.model, request.version, admit, count=False) as call,
        ):
            model = call.model
            k = self._k(model, request.top_k)
            results, failures, batch_size = await self._classify_batch(
                model, k, list(request.images), context, request_id
            )
            if failures:
                detail = f"{len(failures)} of {len(results)} images failed; first: {failures[0].message}"
                call.summary(failures[0].outcome, batch_size, detail)
            else:
                call.summary(Outcome.SUCCESS, batch_size)
        return pb.ClassifyBatchResponse(results=results)

    async def _classify_batch(
        self, model: ServedModel, k: int, images: Sequence[bytes], context: Context, request_id: str
    ) -> tuple[list[pb.ClassifyResult], list[ServeError], int | None]:
        """Every image's result, the failures in image order, and the largest batch an image ran in."""
        start = time.perf_counter()
        # One place per request of max_batch_size images; a call of more requests than the queue holds claims
        # the whole queue, and its other requests are admitted (or refused) as they are queued.
        batcher = model.batcher
        places = min(-(-len(images) // batcher.max_batch_size), batcher.config.max_queue_size)
        try:  # a place in the queue for each of them, before any image is decoded
            ticket = batcher.reserve(places)
        except ServeError as exc:
            for _ in range(places):  # counted as the requests the batcher would have refused
                model.metrics.request_done(exc.outcome, time.perf_counter() - start)
            error = pb.Error(code=exc.code.value[0], message=exc.message)
            return [pb.ClassifyResult(error=error) for _ in images], [exc] * len(images), None
        with ticket:
            return await self._run_batch(model, k, images, context, request_id, ticket, start)

    async def _run_batch(
        self,
        model: ServedModel,
        k: int,
        images: Sequence[bytes],
        context: Context,
        request_id: str,
        ticket: Ticket,
        start: float,
    ) -> tuple[list[pb.ClassifyResult], list[ServeError], int | None]:
        failures: dict[int, ServeError] = {}
        batch_sizes: list[int] = []
        assert model.preprocessor is not None
        rows = await preprocess_each(model.preprocessor, self._pool, images, context.time_remaining())
        done_s = time.perf_counter() - start
        prepared: list[tuple[np.ndarray | ServeError, float]] = [
            (status_of(x, "ClassifyBatch") if isinstance(x, Exception) else x, done_s) for x in rows
        ]
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
                result = await model.infer(
                    {model.info.inputs[0].name: model.image_input(rows)}, context.time_remaining(), ticket
                )
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
                Outcome.SUCCESS, total, result.queue_s, pre_s, result.compute_s, inferences=len(chunk)
            )
            logits = model.output_rows(result.outputs[model.info.outputs[0].name], len(chunk))
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

    @stream_boundary
    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyRequest], context: Context
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        # An item's own request_id wins; one without gets "<stream id>/<n>", the stream id being the
        # stream's x-request-id metadata (or a new id), so a client can find a whole stream in the logs.
        stream_id = context.echo_request_id()

        async def answer(request: pb.ClassifyRequest, n: int) -> pb.ClassifyStreamResponse:
            request_id = resolve_request_id(request.request_id, f"{stream_id}/{n}")
            try:
                with request_scope(request_id), self._in_flight:
                    response = await self._classify(request, context, request_id, "ClassifyStream")
            except Exception as exc:
                failure = status_of(exc, "ClassifyStream")
                error = pb.Error(code=failure.code.value[0], message=failure.message)
                return pb.ClassifyStreamResponse(request_id=request_id, error=error)
            return pb.ClassifyStreamResponse(request_id=request_id, response=response)

        async for item in answer_concurrently(request_iterator, answer):
            yield item

    @boundary
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
                    shape = latest.info.inputs[0].shape  # without the batch dimension, if it has one
                    info.input_shape.extend(shape[1:] if latest.info.max_batch_size > 0 else shape)
            models.append(info)
        return pb.ListModelsResponse(models=models)
