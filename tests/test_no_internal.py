"""No INTERNAL for bad input, ever: every shape, datatype and byte length a KServe request can carry is
refused with a client status (INVALID_ARGUMENT, NOT_FOUND, ...) before anything is allocated, never
INTERNAL or UNKNOWN; and messages that echo a client's value stay short enough to reach the client."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_serve.formats.datatypes import CONTENTS_FIELD, WIRE_DTYPES
from resnet_serve.protos import classifier_pb2 as cpb
from resnet_serve.protos import classifier_pb2_grpc as cpb_grpc
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.errors import MAX_ECHO, echo, status_of
from resnet_serve.server.kserve.service import KServeService
from resnet_serve.server.kserve.wire import InferRequest

HUGE = 2**62
DATATYPES = [*WIRE_DTYPES, "BYTES", "", "FP8", "fp32", "X" * 1000]
DIMS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 8, 64, 2**31, 2**32 + 1, HUGE, 2**63 - 1, -1, -(2**63)]),
    st.integers(-2, 10),
)
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def config(model: Path) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        models=(ModelSettings(name="tiny", path=str(model)),),
    )


@pytest.fixture(scope="module")
def service(tiny_onnx: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, KServeService]]:
    """The real KServe service over the tiny model (lookup, admission, codec, batcher, backend, encoding),
    called without gRPC so that hundreds of requests take seconds."""
    loop = asyncio.new_event_loop()
    server = InferenceServer(config(tiny_onnx))
    loop.run_until_complete(server.manager.start())
    try:
        yield loop, KServeService(server.ctx)
    finally:
        loop.run_until_complete(server.manager.close(5))
        server.pool.shutdown()
        loop.close()


@st.composite
def tensors(draw: st.DrawFn) -> tuple[pb.ModelInferRequest, list[bytes]]:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(DIMS, max_size=6) | st.lists(st.just(1), min_size=60, max_size=70))
    name = draw(st.sampled_from(["input", "other", "x" * 5000]))
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    raw: list[bytes] = []
    count = int(np.prod([max(d, 0) for d in shape], dtype=object)) if shape else 1
    itemsize = WIRE_DTYPES[datatype].itemsize if datatype in WIRE_DTYPES else 4
    sizes = st.sampled_from([0, 1, 3, 4, 64, 256, 1024]) | st.integers(0, 2048)
    if count * itemsize <= 4096:
        sizes = sizes | st.just(count * itemsize)
    how = draw(st.sampled_from(["raw", "contents", "both", "none"]))
    if how in ("raw", "both"):
        data = bytes(draw(sizes))
        if datatype == "BYTES" and draw(st.booleans()):
            data = struct.pack("<I", len(data)) + data
        raw.append(data)
    if how in ("contents", "both"):
        field = CONTENTS_FIELD.get(datatype, draw(st.sampled_from(sorted(set(CONTENTS_FIELD.values())))))
        n = draw(st.sampled_from([0, 1, 3, 64]) | st.just(min(count, 256)))
        values: list[Any]
        if field == "bytes_contents":
            values = [b"\x89PNG"] * n
        elif field == "bool_contents":
            values = [True] * n
        elif field.startswith("fp"):
            values = [draw(st.sampled_from([0.0, 1e300, float("nan")]))] * n
        else:
            top = (
                2**64 - 1
                if field.startswith("uint64")
                else 2**32 - 1
                if field.startswith("uint")
                else 2**31 - 1
            )
            values = [draw(st.sampled_from([0, 255, 256, top]))] * n
            if not field.startswith("uint") and draw(st.booleans()):
                values = [-v for v in values]
        getattr(tensor.contents, field).extend(values)
    request = pb.ModelInferRequest(model_name="tiny", inputs=[tensor])
    if draw(st.booleans()):
        request.inputs.append(tensor)  # the same input twice, or a second one
    return request, raw


def status(loop: asyncio.AbstractEventLoop, service: KServeService, request: InferRequest) -> grpc.StatusCode:
    async def run() -> grpc.StatusCode:
        try:
            await service._infer(request, 10.0, "id", "ModelInfer")
        except Exception as exc:
            error = status_of(exc, "ModelInfer")
            assert len(error.message.encode()) <= 4096
            return error.code
        return grpc.StatusCode.OK

    return loop.run_until_complete(run())


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(tensors())
def test_no_tensor_shape_datatype_or_length_is_internal(
    service: tuple[asyncio.AbstractEventLoop, KServeService], case: tuple[pb.ModelInferRequest, list[bytes]]
) -> None:
    loop, kserve = service
    message, raw = case
    assert status(loop, kserve, InferRequest(message, raw)) in CLIENT_ERRORS


@pytest.mark.parametrize("how", ["raw", "contents", "bytes-raw", "bytes-contents"])
@pytest.mark.parametrize("shape", [[0, HUGE], [HUGE, 0], [1, 0, HUGE, HUGE], [-1, 8], [2**32, 2**32]])
def test_huge_or_negative_dimensions_are_invalid_argument(
    service: tuple[asyncio.AbstractEventLoop, KServeService], how: str, shape: list[int]
) -> None:
    loop, kserve = service
    datatype = "BYTES" if how.startswith("bytes") else "FP32"
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=shape)
    raw = [b""] if how.endswith("raw") else []
    request = InferRequest(pb.ModelInferRequest(model_name="tiny", inputs=[tensor]), raw)
    assert status(loop, kserve, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_echo_cuts_a_value_to_256_characters_and_says_how_long_it_was() -> None:
    assert echo("input") == "'input'"
    long = echo("x" * 100_000)
    assert long.startswith("'xxx") and long.endswith("…(100000 chars)")
    assert len(long) <= MAX_ECHO + len("…(100000 chars)")


@pytest.mark.slow
def test_a_100_kib_model_name_is_not_found_with_a_short_message_on_both_apis(tiny_onnx: Path) -> None:
    name = "m" * 100 * 1024

    async def main() -> None:
        server = InferenceServer(config(tiny_onnx))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                kserve = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
                images = cpb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
                calls = [
                    kserve.ModelInfer(pb.ModelInferRequest(model_name=name), timeout=10),
                    kserve.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10),
                    images.Classify(cpb.ClassifyRequest(model=name, image=b"x"), timeout=10),
                ]
                for call in calls:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value
                    details = info.value.details() or ""
                    assert f"…({len(name)} chars)" in details and len(details) < 1024
        finally:
            await server.stop(5)

    asyncio.run(main())
