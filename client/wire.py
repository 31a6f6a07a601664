"""Conversions between the protobuf messages and the client's typed results (shared by sync and aio)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence

import grpc

from resnet_serve.client.channel import UseDefault
from resnet_serve.client.images import ImageLike, encode_image
from resnet_serve.client.results import (
    Classification,
    ClassifyError,
    ModelInfo,
    ModelVersion,
    Prediction,
    Timing,
)
from resnet_serve.protos import classifier_pb2 as pb


class CallDefaults:
    """The per-call fallbacks both clients share: a call's model, version or timeout of None (model,
    version) or USE_DEFAULT (timeout) means the client's own."""

    model: str
    version: str
    timeout: float | None

    def _model(self, model: str | None) -> str:
        return self.model if model is None else model

    def _version(self, version: str | None) -> str:
        return self.version if version is None else version

    def _timeout(self, timeout: float | UseDefault | None) -> float | None:
        return self.timeout if isinstance(timeout, UseDefault) else timeout


def new_request_id() -> str:
    return uuid.uuid4().hex


def classification(msg: pb.ClassifyResponse, latency_s: float = 0.0) -> Classification:
    t = msg.timing
    return Classification(
        model=msg.model,
        version=msg.version,
        predictions=tuple(Prediction(p.index, p.label, p.score) for p in msg.predictions),
        timing=Timing(t.queue_us, t.preprocess_us, t.compute_us, t.total_us, t.batch_size),
        request_id=msg.request_id,
        latency_s=latency_s,
    )


def status_code(value: int) -> grpc.StatusCode:
    """The StatusCode for a wire integer; UNKNOWN for values gRPC does not define."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def error(msg: pb.Error, request_id: str = "") -> ClassifyError:
    return ClassifyError(status_code(msg.code), msg.message, request_id)


def rpc_error(exc: grpc.RpcError, request_id: str = "") -> ClassifyError:
    """The typed error for a failed call (grpc.RpcError and grpc.aio.AioRpcError alike)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return ClassifyError(code or grpc.StatusCode.UNKNOWN, details or "", request_id)


def batch_results(
    msg: pb.ClassifyBatchResponse, expected: int, latency_s: float
) -> list[Classification | ClassifyError]:
    if len(msg.results) != expected:
        raise ClassifyError(
            grpc.StatusCode.INTERNAL, f"the server returned {len(msg.results)} results for {expected} images"
        )
    out: list[Classification | ClassifyError] = []
    for result in msg.results:
        if result.WhichOneof("result") == "response":
            out.append(classification(result.response, latency_s))
        else:
            out.append(error(result.error))
    return out


def stream_result(msg: pb.ClassifyStreamResponse, latency_s: float) -> Classification | ClassifyError:
    # The stream matches results by the envelope's id, whatever the inner response says.
    if msg.WhichOneof("result") == "response":
        return dataclasses.replace(classification(msg.response, latency_s), request_id=msg.request_id)
    return error(msg.error, msg.request_id)


def models(msg: pb.ListModelsResponse) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=m.name,
            versions=tuple(ModelVersion(v.version, v.state, v.reason) for v in m.versions),
            labels=tuple(m.labels),
            platform=m.platform,
            max_batch_size=m.max_batch_size,
            input_shape=tuple(m.input_shape),
            is_default=m.is_default,
        )
        for m in msg.models
    ]


def classify_request(
    model: str, version: str, image: ImageLike, top_k: int, request_id: str
) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(
        model=model, version=version, image=encode_image(image), top_k=top_k, request_id=request_id
    )


def batch_request(
    model: str, version: str, images: Sequence[ImageLike], top_k: int, request_id: str
) -> pb.ClassifyBatchRequest:
    return pb.ClassifyBatchRequest(
        model=model,
        version=version,
        images=[encode_image(image) for image in images],
        top_k=top_k,
        request_id=request_id,
    )


class StreamLedger:
    """Bookkeeping for one ClassifyStream call: which input each request id is, and when it was sent.

    Inputs that cannot be encoded never reach the server; their errors wait in `local_errors` until the
    caller's loop hands them out.
    """

    def __init__(self, model: str, version: str, top_k: int) -> None:
        self._model, self._version, self._top_k = model, version, top_k
        self._prefix = new_request_id()[:12]
        self._index_of: dict[str, int] = {}
        self._sent_at: dict[str, float] = {}
        self.local_errors: list[tuple[int, ClassifyError]] = []

    def request(self, i: int, image: ImageLike) -> pb.ClassifyRequest | None:
        rid = f"{self._prefix}-{i}"
        try:
            msg = classify_request(self._model, self._version, image, self._top_k, rid)
        except (OSError, TypeError, ValueError) as exc:
            self.local_errors.append((i, ClassifyError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), rid)))
            return None
        self._index_of[rid] = i
        self._sent_at[rid] = time.perf_counter()
        return msg

    def result(self, msg: pb.ClassifyStreamResponse) -> tuple[int, Classification | ClassifyError]:
        result = stream_result(msg, 0.0)
        rid = result.request_id
        now = time.perf_counter()
        if isinstance(result, Classification):
            result = dataclasses.replace(result, request_id=rid, latency_s=now - self._sent_at.pop(rid, now))
        return self._index_of.pop(rid, -1), result
