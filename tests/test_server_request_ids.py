"""Request ids end to end: the id a client sets (x-request-id metadata or the request's id field) comes back
in the response and its metadata and is on the request's JSON log lines at DEBUG; a request without one
gets a new id; at the default level nothing is logged per request. Both APIs, unary and streaming."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from test_metrics_logging import restore_root_logging
from test_server_app import config_for, png

from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.protos import grpc_service_pb2 as kpb
from resnet_serve.protos import grpc_service_pb2_grpc as kpb_grpc
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.observability.logging import REQUEST_ID_METADATA, configure_logging

__all__ = ["restore_root_logging"]  # the fixture, imported so pytest finds it
Stubs = tuple[Any, Any]  # (image API stub, KServe stub)


def serve(tiny_onnx: Path, level: str, body: Callable[[Stubs], Awaitable[None]]) -> list[dict[str, Any]]:
    """Run `body` against an in-process server logging JSON at `level`; the log lines it wrote meanwhile."""
    out = io.StringIO()

    async def main() -> None:
        server = InferenceServer(config_for(tiny_onnx))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                configure_logging(level, "json", stream=out)
                await body(
                    (
                        pb_grpc.ImageClassifierStub(channel),  # type: ignore[no-untyped-call]
                        kpb_grpc.GRPCInferenceServiceStub(channel),  # type: ignore[no-untyped-call]
                    )
                )
                configure_logging("warning", "json", stream=io.StringIO())
        finally:
            await server.stop(5)

    asyncio.run(main())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def infer_request(request_id: str = "", cols: int = 8) -> Any:
    x = np.zeros((1, 1, 8, cols), dtype=np.float32)
    tensor = kpb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(x.shape))
    return kpb.ModelInferRequest(
        model_name="tiny", id=request_id, inputs=[tensor], raw_input_contents=[x.tobytes()]
    )


def echoed(metadata: Any) -> str | None:
    return dict(metadata or ()).get(REQUEST_ID_METADATA)


def access_lines(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {line["request_id"]: line for line in lines if line["logger"] == "resnet_serve.access"}
    assert len(found) == len([line for line in lines if line["logger"] == "resnet_serve.access"])
    return found


@pytest.mark.usefixtures("restore_root_logging")
def test_a_client_id_is_echoed_and_on_the_debug_access_log(tiny_onnx: Path) -> None:
    seen: dict[str, Any] = {}

    async def body(stubs: Stubs) -> None:
        images, kserve = stubs
        call = images.Classify(pb.ClassifyRequest(image=png()), metadata=((REQUEST_ID_METADATA, "img-1"),))
        seen["classify"] = (await call).request_id, echoed(await call.trailing_metadata())
        # Metadata wins over the field; a field alone is used as is.
        call = images.Classify(
            pb.ClassifyRequest(image=png(), request_id="field"), metadata=((REQUEST_ID_METADATA, "meta"),)
        )
        seen["precedence"] = (await call).request_id, echoed(await call.trailing_metadata())
        call = images.ClassifyBatch(pb.ClassifyBatchRequest(images=[png(), png()], request_id="batch-1"))
        batch = await call
        seen["batch"] = [r.response.request_id for r in batch.results], echoed(await call.trailing_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await images.Classify(pb.ClassifyRequest(model="nope", image=png(), request_id="missing"))
        seen["refused"] = info.value.code(), echoed(info.value.trailing_metadata())

        call = kserve.ModelInfer(infer_request(), metadata=((REQUEST_ID_METADATA, "kserve-1"),))
        seen["infer"] = (await call).id, echoed(await call.trailing_metadata())
        call = kserve.ModelInfer(infer_request("triton-id"))
        seen["infer_id"] = (await call).id, echoed(await call.trailing_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kserve.ModelInfer(infer_request("bad-shape", cols=9))
        seen["infer_bad"] = info.value.code(), echoed(info.value.trailing_metadata())

    lines = serve(tiny_onnx, "debug", body)
    assert seen["classify"] == ("img-1", "img-1")
    assert seen["precedence"] == ("meta", "meta")
    assert seen["batch"] == (["batch-1/0", "batch-1/1"], "batch-1")
    assert seen["refused"] == (grpc.StatusCode.NOT_FOUND, "missing")
    assert seen["infer"] == ("kserve-1", "kserve-1")
    assert seen["infer_id"] == ("triton-id", "triton-id")
    assert seen["infer_bad"] == (grpc.StatusCode.INVALID_ARGUMENT, "bad-shape")
    access = access_lines(lines)
    assert set(access) == {"img-1", "meta", "batch-1", "missing", "kserve-1", "triton-id", "bad-shape"}
    assert (access["img-1"]["model"], access["img-1"]["outcome"]) == ("tiny", "success")
    assert access["batch-1"]["outcome"] == "success" and access["batch-1"]["batch_size"] >= 1
    assert (access["missing"]["model"], access["missing"]["outcome"]) == ("nope", "not_found")
    assert access["bad-shape"]["outcome"] == "invalid_input" and "shape" in access["bad-shape"]["detail"]


@pytest.mark.usefixtures("restore_root_logging")
def test_stream_items_carry_their_own_id_or_one_derived_from_the_stream(tiny_onnx: Path) -> None:
    seen: dict[str, Any] = {}

    async def body(stubs: Stubs) -> None:
        images, kserve = stubs
        requests = [pb.ClassifyRequest(image=png(), request_id="own"), pb.ClassifyRequest(image=png())]
        call = images.ClassifyStream(iter(requests), metadata=((REQUEST_ID_METADATA, "stream-a"),))
        seen["images"] = sorted([r.request_id async for r in call]), echoed(await call.trailing_metadata())
        call = kserve.ModelStreamInfer(
            iter([infer_request("own-k"), infer_request(), infer_request(cols=9)]),
            metadata=((REQUEST_ID_METADATA, "stream-k"),),
        )
        answers = [(a.infer_response.id, bool(a.error_message)) async for a in call]
        seen["kserve"] = sorted(answers), echoed(await call.trailing_metadata())
        # Without any id a stream still gets one, and its items ids under it.
        call = images.ClassifyStream(iter([pb.ClassifyRequest(image=png())]))
        (reply,) = [r async for r in call]
        seen["generated"] = reply.request_id, echoed(await call.trailing_metadata())

    lines = serve(tiny_onnx, "debug", body)
    assert seen["images"] == (["own", "stream-a/1"], "stream-a")
    assert seen["kserve"] == ([("own-k", False), ("stream-k/1", False), ("stream-k/2", True)], "stream-k")
    item, stream = seen["generated"]
    assert len(stream) == 32 and item == f"{stream}/0"
    access = access_lines(lines)
    assert set(access) == {"own", "stream-a/1", "own-k", "stream-k/1", "stream-k/2", item}
    assert access["stream-k/2"]["outcome"] == "invalid_input"


@pytest.mark.usefixtures("restore_root_logging")
def test_nothing_is_logged_per_request_at_the_default_level(tiny_onnx: Path) -> None:
    ids: list[str] = []

    async def body(stubs: Stubs) -> None:
        images, kserve = stubs
        for _ in range(3):
            call = images.Classify(pb.ClassifyRequest(image=png()))
            ids.append((await call).request_id)
            assert echoed(await call.trailing_metadata()) == ids[-1]
            ids.append((await kserve.ModelInfer(infer_request())).id)
        with pytest.raises(grpc.aio.AioRpcError):
            await images.Classify(pb.ClassifyRequest(image=b"not an image"))

    lines = serve(tiny_onnx, "info", body)
    assert len(set(ids)) == 6 and all(len(i) == 32 for i in ids)  # generated, one per request
    assert lines == []
