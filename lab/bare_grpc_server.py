"""The floor of a Python gRPC inference server: a bare `grpc.aio` server that parses, runs and answers.

    python -m lab.bare_grpc_server --model small=small.onnx --model large=large.onnx --port 8001

KServe's `ModelInfer` and nothing else in the way: the request is parsed with protobuf, its raw tensor
contents become NumPy views, ONNX Runtime (one intra-op thread) runs the model inline in the handler, and the
outputs go back as raw contents. No validation, batcher, metrics, interceptor, request ids or worker thread.
Beside it: `ServerReady` (so a client can wait for it) and `ModelStatistics` with one success and one failure
counter per model (so a load generator's answers can be checked against the server's own count, as
lab/serving_floor.py does). It is what issue #22's table calls "a bare grpc.aio server"; lab/serving_floor.py
starts it, pinned to one core, beside `resnet-serve serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from resnet_serve.formats.datatypes import WIRE_DTYPES, numpy_to_kserve
from resnet_serve.protos import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
_MB = 1024 * 1024
# The transport settings resnet-serve's server uses (server/app.py), so that the two differ in what they do
# per request, not in a flow-control window: a 600 KB tensor under gRPC's default 64 KB window waits on
# round trips.
OPTIONS = [
    ("grpc.max_receive_message_length", 64 * _MB),
    ("grpc.max_send_message_length", 64 * _MB),
    ("grpc.so_reuseport", 0),
    ("grpc.http2.lookahead_bytes", 16 * _MB),
]


class BareModel:
    """One ONNX model in an ONNX Runtime session (one thread), and the counts ModelStatistics reports."""

    def __init__(self, name: str, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.name = name
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.success = 0
        self.fail = 0

    def infer(self, request: Any) -> bytes:
        feeds = {
            tensor.name: np.frombuffer(raw, dtype=WIRE_DTYPES[tensor.datatype]).reshape(tuple(tensor.shape))
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        results = self.session.run(self.outputs, feeds)
        response = pb.ModelInferResponse(model_name=self.name, model_version="1", id=request.id)
        for name, value in zip(self.outputs, results, strict=True):
            response.outputs.add(name=name, datatype=numpy_to_kserve(value.dtype), shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return bytes(response.SerializeToString())


def handlers(models: dict[str, BareModel]) -> Any:
    """The generic gRPC handlers: ModelInfer, ServerReady and ModelStatistics over `models`."""
    import grpc

    ready = bytes(pb.ServerReadyResponse(ready=True).SerializeToString())

    async def model_infer(data: bytes, context: Any) -> bytes:
        request = pb.ModelInferRequest.FromString(data)
        model = models.get(request.model_name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_name!r}")
        assert model is not None  # abort raised
        try:
            answer = model.infer(request)
        except Exception as exc:  # a bad request: counted, answered with the reason
            model.fail += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        model.success += 1
        return answer

    async def server_ready(data: bytes, context: Any) -> bytes:
        return ready

    async def model_statistics(data: bytes, context: Any) -> bytes:
        asked = pb.ModelStatisticsRequest.FromString(data).name
        response = pb.ModelStatisticsResponse()
        for model in models.values():
            if asked in ("", model.name):
                stats = response.model_stats.add(name=model.name, version="1")
                stats.inference_count = stats.execution_count = model.success
                stats.inference_stats.success.count = model.success
                stats.inference_stats.fail.count = model.fail
        return bytes(response.SerializeToString())

    def unary(method: Callable[..., Any]) -> Any:
        return grpc.unary_unary_rpc_method_handler(method)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": unary(model_infer),
            "ServerReady": unary(server_ready),
            "ModelStatistics": unary(model_statistics),
        },
    )


async def serve(models: dict[str, BareModel], host: str, port: int, reuse_port: bool = False) -> None:
    import grpc

    options = [(k, 1 if k == "grpc.so_reuseport" and reuse_port else v) for k, v in OPTIONS]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handlers(models),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"bare_grpc_server: serving {', '.join(models)} on {host}:{port}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.bare_grpc_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="an ONNX model to serve under NAME (repeatable)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other processes (SO_REUSEPORT): N of these on one port are the floor of "
        "N worker processes",
    )
    args = parser.parse_args(argv)
    models: dict[str, BareModel] = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            parser.error(f"--model {spec}: expected NAME=PATH to an existing ONNX file")
        models[name] = BareModel(name, Path(path))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
        asyncio.run(serve(models, args.host, args.port, args.reuse_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
