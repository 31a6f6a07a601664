"""What a KServe request may ask back: each output at most once, refused before any work when named twice
(gRPC INVALID_ARGUMENT, HTTP 400), and an answer over the gRPC message limit refused RESOURCE_EXHAUSTED with
its size and the limit, counted as a failed request (ModelStatistics, the access log) with nothing in the
server log. Before, a 1 MB request naming its output 100 times was computed, then grpc failed to send the
100 MB answer, logged a traceback and the server counted a success; HTTP sent the 100 MB.

The real server in this process (grpc.aio and aiohttp on one event loop) over triton_models.py's `tile`,
whose answer is four times its request, under a 1 MiB message limit."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import grpc
import numpy as np
import pytest
from triton_models import write_tile
from tritonclient.utils import shared_memory as shm

from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ServerConfig
from resnet_serve.server.errors import ServeError
from resnet_serve.server.kserve.service import KServeService
from resnet_serve.server.kserve.wire import InferRequest
from resnet_serve.server.observability.logging import ACCESS_LOGGER

LIMIT = 1 << 20  # --grpc-max-message-bytes
TWICE = "output 'OUTPUT0' is requested twice"
T = TypeVar("T")


@dataclass
class Live:
    server: InferenceServer
    loop: asyncio.AbstractEventLoop

    def run(self, work: Awaitable[T]) -> T:
        return self.loop.run_until_complete(work)

    @asynccontextmanager
    async def stub(self) -> AsyncIterator[Any]:
        """A KServe stub whose channel takes answers of any size (the server's limit is the one tested)."""
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        target = f"127.0.0.1:{self.server.grpc_port}"
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

    async def grpc(self, request: Any) -> tuple[grpc.StatusCode, str, Any]:
        """(status, details, response) of a ModelInfer."""
        async with self.stub() as stub:
            try:
                return grpc.StatusCode.OK, "", await stub.ModelInfer(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                return error.code(), error.details() or "", None

    async def stream(self, requests: list[Any]) -> list[Any]:
        async with self.stub() as stub:
            return [answer async for answer in stub.ModelStreamInfer(iter(requests), timeout=30)]

    async def http(self, body: dict[str, Any], binary: bytes = b"") -> tuple[int, bytes]:
        header = json.dumps(body).encode()
        headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
        url = f"http://127.0.0.1:{self.server.http_port}/v2/models/tile/infer"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=header + binary, headers=headers) as answer,
        ):
            return answer.status, await answer.read()

    async def counts(self) -> tuple[int, int, int]:
        """The tile model's ModelStatistics: (success, fail, execution_count)."""
        async with self.stub() as stub:
            stats = (await stub.ModelStatistics(pb.ModelStatisticsRequest(name="tile"))).model_stats[0]
        inference = stats.inference_stats
        return inference.success.count, inference.fail.count, stats.execution_count


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    repository = tmp_path_factory.mktemp("outputs") / "repository"
    write_tile(repository)
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        model_repository=str(repository),
        max_image_bytes=LIMIT // 2,
        grpc_max_message_bytes=LIMIT,
    )
    loop = asyncio.new_event_loop()
    server = InferenceServer(config)
    loop.run_until_complete(server.start())
    try:
        yield Live(server, loop)
    finally:
        loop.run_until_complete(server.stop(5))
        loop.close()


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The server's log records (the access log included); the test must leave no ERROR or traceback."""
    caplog.set_level(logging.DEBUG, logger=ACCESS_LOGGER)
    yield caplog
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad


def tile_request(values: int, *outputs: pb.ModelInferRequest.InferRequestedOutputTensor) -> Any:
    request = pb.ModelInferRequest(model_name="tile", id="r", outputs=outputs)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[values])
    request.raw_input_contents.append(np.ones(values, np.float32).tobytes())
    return request


def output(**parameters: Any) -> pb.ModelInferRequest.InferRequestedOutputTensor:
    tensor = pb.ModelInferRequest.InferRequestedOutputTensor(name="OUTPUT0")
    for key, value in parameters.items():
        field = "string_param" if isinstance(value, str) else "int64_param"
        setattr(tensor.parameters[key], field, value)
    return tensor


def access_outcomes(log: pytest.LogCaptureFixture) -> list[tuple[str, str | None]]:
    return [(r.outcome, r.detail) for r in log.records if r.name == ACCESS_LOGGER]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ an output named twice


def test_an_output_requested_many_times_is_invalid_argument_before_any_work(
    live: Live, log: pytest.LogCaptureFixture
) -> None:
    before = live.run(live.counts())
    code, details, _ = live.run(live.grpc(tile_request(1000, *[output()] * 100)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == TWICE
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}] * 100,
    }
    status, answer = live.run(live.http(body))
    assert (status, json.loads(answer)) == (400, {"error": TWICE})
    success, fail, executions = live.run(live.counts())
    assert (success, executions) == before[::2] and fail == before[1] + 2  # refused, counted, never run
    assert [outcome for outcome, _ in access_outcomes(log)] == ["invalid_input"] * 2


def test_an_output_named_twice_with_classification_or_shared_memory_is_refused_too(live: Live) -> None:
    """No parameter makes the second mention another output: a classification of it, or the same region
    written twice (the second silently won before), is the same name requested twice."""
    key = "/resnet_serve_test_outputs"
    handle = shm.create_shared_memory_region("outputs", key, 4096)
    try:

        async def register() -> None:
            async with live.stub() as stub:
                message = pb.SystemSharedMemoryRegisterRequest(name="out", key=key, byte_size=4096)
                await stub.SystemSharedMemoryRegister(message)

        live.run(register())
        region = {"shared_memory_region": "out", "shared_memory_byte_size": 64}
        for outputs in (
            [output(), output(classification=3)],
            [output(classification=3), output(classification=5)],
            [output(**region), output(**region, shared_memory_offset=1024)],
        ):
            code, details, _ = live.run(live.grpc(tile_request(4, *outputs)))
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, TWICE)
        code, _, answer = live.run(live.grpc(tile_request(4, output(**region))))
        assert code == grpc.StatusCode.OK and list(answer.outputs[0].shape) == [16]  # once is fine
    finally:
        shm.destroy_shared_memory_region(handle)


# ------------------------------------------------------------------------- an answer over the message limit

OVER = LIMIT // 16 + 256  # values in: 4 x 4 bytes each out, the answer ~4 KB over the limit


def test_an_answer_over_the_grpc_limit_is_resource_exhausted_counted_a_failure_and_not_logged(
    live: Live, log: pytest.LogCaptureFixture
) -> None:
    before = live.run(live.counts())
    code, details, _ = live.run(live.grpc(tile_request(OVER)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    match = re.fullmatch(
        rf"the response is (\d+) bytes; the limit is grpc_max_message_bytes={LIMIT} "
        r"\(request fewer rows or outputs, or raise the limit\)",
        details,
    )
    assert match and 16 * OVER < int(match[1]) < 16 * OVER + 100, details
    success, fail, executions = live.run(live.counts())
    assert (success, fail, executions) == (before[0], before[1] + 1, before[2] + 1)  # computed, then refused
    assert access_outcomes(log) == [("invalid_input", details)]


def test_http_sends_an_answer_over_the_grpc_limit(live: Live, log: pytest.LogCaptureFixture) -> None:
    """The limit is gRPC's send limit: HTTP has none for answers (as Triton's HTTP endpoint), so the same
    request over HTTP is answered whole and counted a success."""
    before = live.run(live.counts())
    tensor = {
        "name": "INPUT0",
        "datatype": "FP32",
        "shape": [OVER],
        "parameters": {"binary_data_size": 4 * OVER},
    }
    body = {"inputs": [tensor], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}
    status, answer = live.run(live.http(body, np.ones(OVER, np.float32).tobytes()))
    assert status == 200 and len(answer) > 16 * OVER
    assert live.run(live.counts())[:2] == (before[0] + 1, before[1])
    assert [outcome for outcome, _ in access_outcomes(log)] == ["success"]


def test_a_stream_answer_over_the_limit_is_an_error_in_stream_and_the_stream_goes_on(
    live: Live, log: pytest.LogCaptureFixture
) -> None:
    before = live.run(live.counts())
    big, small = tile_request(OVER), tile_request(2)
    big.id, small.id = "big", "small"
    answers = {a.infer_response.id: a for a in live.run(live.stream([big, small]))}
    assert answers.keys() == {"big", "small"}
    assert "grpc_max_message_bytes=1048576" in answers["big"].error_message
    assert not answers["small"].error_message
    got = np.frombuffer(answers["small"].infer_response.raw_output_contents[0], np.float32)
    assert got.tolist() == [1.0] * 8
    assert live.run(live.counts())[:2] == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize("streamed", [False, True], ids=["ModelInfer", "ModelStreamInfer"])
def test_the_answer_size_check_is_exact(live: Live, streamed: bool) -> None:
    """An answer of exactly the limit is sent, one byte more is refused: the size is the encoded message's
    (the stream's wrapper included), counted without serialising the tensors."""
    service = KServeService(live.server.ctx)

    async def answer(message: Any, max_bytes: int | None) -> Any:
        incoming = InferRequest(message, list(message.raw_input_contents))
        message.ClearField("raw_input_contents")
        return await service._infer(incoming, 10.0, "id", "ModelInfer", max_bytes, streamed)

    for values in (1, 1000, 40_000):
        request = tile_request(values)
        response = live.run(answer(copy(request), None))
        size = (pb.ModelStreamInferResponse(infer_response=response) if streamed else response).ByteSize()
        assert live.run(answer(copy(request), size)).SerializeToString() == response.SerializeToString()
        with pytest.raises(ServeError) as info:
            live.run(answer(copy(request), size - 1))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"the response is {size} bytes; the limit is grpc_max_message_bytes={size - 1} " in str(
            info.value
        )


def copy(message: Any) -> Any:
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate
