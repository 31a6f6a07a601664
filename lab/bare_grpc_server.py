"""The floor of a Python gRPC inference server: a bare `grpc.aio` server that parses, runs and answers.

    python -m lab.bare_grpc_server --model small=small.onnx --model large=large.onnx --port 8001
    python -m lab.bare_grpc_server --model small=small.onnx --port 8001 --hop

KServe's `ModelInfer` and nothing else in the way: the request is parsed with protobuf, its raw tensor
contents become NumPy views, ONNX Runtime (one intra-op thread) runs the model inline in the handler, and the
outputs go back as raw contents. No validation, batcher, metrics, interceptor, request ids or worker thread.
Beside it: `ServerReady` (so a client can wait for it) and `ModelStatistics` with one success and one failure
counter per model (so a load generator's answers can be checked against the server's own count, as
lab/serving_floor.py does). It is what issue #22's table calls "a bare grpc.aio server"; lab/serving_floor.py
starts it, pinned to one core, beside `resnet-serve serve`.

`--hop` is the floor of splitting a server into a front end and an engine process (`serve --workers N`): the
same handler, but instead of running the model it sends the request's tensors to a child process over a
socketpair (resnet-serve's own framing, server/ipc/channel.py: length-prefixed pickles, one write per event
loop turn) and awaits the answer, which the child computes with the same session and sends back. Nothing
else: no batcher, no shared-memory arena (tensors travel in the message, so on large tensors this floor
copies more than resnet-serve does), no admission or metrics. Its front end's CPU per request against the
plain server's is what the hop itself costs a grpc.aio process: the suspension of the handler until the
answer comes, and the messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from resnet_serve.formats.datatypes import WIRE_DTYPES, numpy_to_kserve
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.ipc.channel import Channel, Frames, Message, connect, frame

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
    """One ONNX model in an ONNX Runtime session (one thread), and the counts ModelStatistics reports. A
    `--hop` front end keeps only the counts (`session=False`): its child process runs the sessions."""

    def __init__(self, name: str, path: Path, session: bool = True) -> None:
        self.name = name
        self.success = 0
        self.fail = 0
        if not session:
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        results = self.session.run(self.outputs, feeds)
        return list(zip(self.outputs, results, strict=True))

    def infer(self, request: Any) -> bytes:
        feeds = {
            tensor.name: np.frombuffer(raw, dtype=WIRE_DTYPES[tensor.datatype]).reshape(tuple(tensor.shape))
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        return answer(
            request, [(name, value.dtype, value.shape, value.tobytes()) for name, value in self.run(feeds)]
        )


def answer(request: Any, outputs: list[tuple[str, Any, tuple[int, ...], bytes]]) -> bytes:
    """The serialized ModelInferResponse to `request` with these outputs (name, dtype, shape, raw bytes)."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for name, dtype, shape, data in outputs:
        response.outputs.add(name=name, datatype=numpy_to_kserve(np.dtype(dtype)), shape=shape)
        response.raw_output_contents.append(data)
    return bytes(response.SerializeToString())


# ------------------------------------------------------------------------------------ --hop: the split


class Hop:
    """The front end's end of the socketpair to its engine process (resnet-serve's `Channel`): one message
    out per request (those of one event loop turn in one write), its answer awaited."""

    def __init__(self) -> None:
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._outbox: list[bytes] = []
        self._channel: Channel | None = None

    async def open(self, sock: socket.socket) -> None:
        self._channel = await connect(sock, self._answered, self._lost)

    def _answered(self, message: Message) -> None:
        rid, ok, value = message
        future = self._pending.pop(rid)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(ValueError(value))

    def _lost(self) -> None:
        for future in self._pending.values():
            future.set_exception(ConnectionError("the engine process is gone"))
        self._pending.clear()

    async def infer(self, name: str, tensors: list[tuple[str, str, tuple[int, ...], bytes]]) -> Any:
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[rid] = future
        self._outbox.append(frame((rid, name, tensors)))
        if len(self._outbox) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        assert self._channel is not None
        self._channel.write(b"".join(outbox))


def engine(fd: int, models: dict[str, BareModel]) -> None:
    """The `--hop` child: answers each request its front end sends (blocking, one thread), until EOF."""
    sock = socket.socket(fileno=fd)
    frames = Frames()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while count := sock.recv_into(buffer):
        answers = []
        for rid, name, tensors in frames.feed(view[:count]):
            message: Message
            try:
                feeds = {
                    key: np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
                    for key, dtype, shape, data in tensors
                }
                outputs = models[name].run(feeds)
                message = (rid, True, [(k, v.dtype.str, v.shape, v.tobytes()) for k, v in outputs])
            except Exception as exc:  # a bad request: its front end answers INVALID_ARGUMENT
                message = (rid, False, str(exc))
            answers.append(frame(message))
        sock.sendall(b"".join(answers))


def start_engine(specs: list[str]) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """The `--hop` child process serving `specs`, and the front end's end of their socketpair."""
    front, child = socket.socketpair()
    fd = child.fileno()
    command = [sys.executable, "-m", "lab.bare_grpc_server", "--engine-fd", str(fd)]
    for spec in specs:
        command += ["--model", spec]
    process = subprocess.Popen(command, pass_fds=[fd], cwd=Path(__file__).resolve().parents[1])
    child.close()
    return front, process


def handlers(models: dict[str, BareModel], hop: Hop | None = None) -> Any:
    """The generic gRPC handlers: ModelInfer, ServerReady and ModelStatistics over `models`; with `hop`,
    ModelInfer's model runs in the engine process at its other end."""
    import grpc

    ready = bytes(pb.ServerReadyResponse(ready=True).SerializeToString())

    async def model_infer(data: bytes, context: Any) -> bytes:
        request = pb.ModelInferRequest.FromString(data)
        model = models.get(request.model_name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_name!r}")
        assert model is not None  # abort raised
        try:
            if hop is None:
                reply = model.infer(request)
            else:
                tensors = [
                    (tensor.name, WIRE_DTYPES[tensor.datatype].str, tuple(tensor.shape), raw)
                    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
                ]
                reply = answer(request, await hop.infer(request.model_name, tensors))
        except Exception as exc:  # a bad request: counted, answered with the reason
            model.fail += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        model.success += 1
        return reply

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


async def serve(
    models: dict[str, BareModel],
    host: str,
    port: int,
    reuse_port: bool = False,
    engine_sock: socket.socket | None = None,
) -> None:
    import grpc

    hop = None
    if engine_sock is not None:
        hop = Hop()
        await hop.open(engine_sock)
    options = [(k, 1 if k == "grpc.so_reuseport" and reuse_port else v) for k, v in OPTIONS]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handlers(models, hop),))
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
    parser.add_argument("--port", type=int, help="the port to serve on (required)")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other processes (SO_REUSEPORT): N of these on one port are the floor of "
        "N worker processes",
    )
    parser.add_argument(
        "--hop",
        action="store_true",
        help="run the models in a child process, each request's tensors sent over a socketpair and awaited: "
        "the floor of a front end and an engine in two processes",
    )
    parser.add_argument("--engine-fd", type=int, help=argparse.SUPPRESS)  # the --hop child's socket
    args = parser.parse_args(argv)
    specs: dict[str, Path] = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            parser.error(f"--model {spec}: expected NAME=PATH to an existing ONNX file")
        specs[name] = Path(path)
    if args.engine_fd is not None:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole group: the front end too
            engine(args.engine_fd, {name: BareModel(name, path) for name, path in specs.items()})
        return 0
    if args.port is None:
        parser.error("--port is required")
    models = {name: BareModel(name, path, session=not args.hop) for name, path in specs.items()}
    child = None
    engine_sock = None
    if args.hop:
        engine_sock, child = start_engine(args.model)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
            asyncio.run(serve(models, args.host, args.port, args.reuse_port, engine_sock))
    finally:
        if child is not None:  # it ends at EOF on its socket
            if engine_sock is not None:
                engine_sock.close()
            child.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
