"""Conversions between the protobuf messages and the client's typed results (shared by sync and aio)."""

from __future__ import annotations

import uuid

import grpc

from client.results import Classification, ClassifyError, ModelInfo, ModelVersion, Prediction, Timing
from protos import classifier_pb2 as pb


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
    if msg.WhichOneof("result") == "response":
        result = classification(msg.response, latency_s)
        if not result.request_id:
            # The stream matches results by id; the id lives on the envelope even if the response omits it.
            return Classification(
                result.model, result.version, result.predictions, result.timing, msg.request_id, latency_s
            )
        return result
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
