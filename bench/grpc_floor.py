"""The floor under the server's latency overhead: what Python gRPC itself costs, measured side by side.

    python -m bench.grpc_floor --model artifacts/resnet50/model.onnx --rounds 3

Three things answer the same tritonclient ModelInfer requests (batch-1 FP32 tensors, one at a time), in
alternating rounds:
- bare: the server's backend class called in-process (what bench/server_overhead.py compares against);
- minimal: the least a Python grpcio server can do, started with `--minimal-server`: a grpc.aio server with
  one generic ModelInfer handler that parses the request with protobuf, runs the same backend on a worker
  thread and answers; no batcher, no validation, no metrics, no interceptor;
- resnet-serve: `resnet-serve serve` with the settings bench/server_overhead.py uses.
The minimal server's overhead over bare is the floor that no server written on grpcio can go below on this
machine; resnet-serve minus minimal is what our own serving layer costs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from models.files import write_json_atomic
from server.launch import free_port, serve_command, stop

_MB = 1024 * 1024
SERVICE = "inference.GRPCInferenceService"


# ------------------------------------------------------------------------------------------ minimal server


def _handlers(backend: Any, run: Callable[..., Any]) -> dict[str, Any]:
    """ModelInfer and ServerReady as generic handlers; `run(backend.infer, feeds)` runs the model (awaited
    when the server is asyncio's)."""
    import grpc

    from protos import grpc_service_pb2 as pb
    from server.backends.base import numpy_to_kserve

    spec = backend.info.inputs[0]

    def parse(data: bytes) -> dict[str, np.ndarray]:
        request = pb.ModelInferRequest.FromString(data)
        shape = tuple(request.inputs[0].shape)
        return {spec.name: np.frombuffer(request.raw_input_contents[0], dtype=spec.dtype).reshape(shape)}

    def answer(outputs: dict[str, np.ndarray]) -> bytes:
        response = pb.ModelInferResponse(model_name="model", model_version="1")
        for name, value in outputs.items():
            response.outputs.add(name=name, datatype=numpy_to_kserve(value.dtype), shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return bytes(response.SerializeToString())

    if asyncio.iscoroutinefunction(run):

        async def infer_async(data: bytes, context: Any) -> bytes:
            return answer(await run(backend.infer, parse(data)))

        async def ready_async(data: bytes, context: Any) -> bytes:
            return bytes(pb.ServerReadyResponse(ready=True).SerializeToString())

        infer, ready = infer_async, ready_async
    else:

        def infer_sync(data: bytes, context: Any) -> bytes:
            return answer(run(backend.infer, parse(data)))

        def ready_sync(data: bytes, context: Any) -> bytes:
            return bytes(pb.ServerReadyResponse(ready=True).SerializeToString())

        infer, ready = infer_sync, ready_sync  # type: ignore[assignment]
    return {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
        "ServerReady": grpc.unary_unary_rpc_method_handler(ready),
    }


_OPTIONS = [("grpc.max_receive_message_length", 64 * _MB), ("grpc.http2.lookahead_bytes", 16 * _MB)]


def _minimal_server(model: Path, port: int, threads: int, kind: str) -> None:
    """`kind` "aio": grpc.aio, the model on a worker thread; "sync": grpc's thread-pool server, the model
    run in the handler's own thread."""
    import grpc

    from server.backends.factory import backend_for, create_backend

    backend = create_backend(model, backend_for(model, "auto"), "cpu", threads)
    if kind == "sync":
        server = grpc.server(ThreadPoolExecutor(max_workers=4), options=_OPTIONS)
        handlers = _handlers(backend, lambda infer, feeds: infer(feeds))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        worker = ThreadPoolExecutor(max_workers=1)  # one thread, as one resnet-serve instance has

        async def on_thread(infer: Callable[..., Any], feeds: dict[str, np.ndarray]) -> Any:
            return await asyncio.get_running_loop().run_in_executor(worker, infer, feeds)

        server = grpc.aio.server(options=_OPTIONS)
        handlers = _handlers(backend, on_thread)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ measurement


def _client(port: int, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> Any:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"grpc_floor: a server exited with code {process.returncode}")
        try:
            if client.is_server_ready():
                return client
        except Exception:  # not listening yet
            pass
        time.sleep(0.25)
    raise SystemExit("grpc_floor: a server did not become ready")


def _time(call: Callable[[], object], seconds: float, into: list[float]) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        call()
        into.append(time.perf_counter() - start)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    import tritonclient.grpc as triton

    from server.backends.factory import backend_for, create_backend

    bare = create_backend(args.model, backend_for(args.model, "auto"), "cpu", args.threads)
    spec, output = bare.info.inputs[0], bare.info.outputs[0].name
    shape = [1, *spec.shape[1:]]
    array = np.random.default_rng(0).standard_normal(shape).astype(spec.dtype)
    tensor = triton.InferInput(spec.name, shape, spec.kserve_datatype)
    tensor.set_data_from_numpy(array)
    outputs = [triton.InferRequestedOutput(output)]

    minimal = {
        kind: (port, subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_floor", "--minimal-server", kind, "--port", str(port),
             "--model", str(args.model), "--threads", str(args.threads)]
        ))
        for kind, port in (("aio", free_port()), ("sync", free_port()))
    }  # fmt: skip
    serve_port = free_port()
    served = subprocess.Popen(
        serve_command(
            "--model", f"model={args.model}", "--host", "127.0.0.1", "--grpc-port", str(serve_port),
            "--metrics-port", "-1", "--intra-op-threads", str(args.threads), "--log-level", "warning",
        )
    )  # fmt: skip
    targets: dict[str, Callable[[], object]] = {"bare": lambda: bare.infer({spec.name: array})}
    rounds: list[dict[str, float]] = []
    try:
        clients = {f"minimal-{kind}": _client(port, process) for kind, (port, process) in minimal.items()}
        clients["resnet-serve"] = _client(serve_port, served)
        for name, client in clients.items():
            targets[name] = functools.partial(client.infer, "model", [tensor], outputs=outputs)
        # Every server must really run the model: the same answer as the bare call, or the floor is a fake.
        expected = bare.infer({spec.name: array})[output]
        for name, client in clients.items():
            got = client.infer("model", [tensor], outputs=outputs).as_numpy(output)
            if got is None or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                raise SystemExit(f"grpc_floor: {name} answered differently from the bare call")
        for call in targets.values():  # warm-up
            _time(call, args.warmup, [])
        for r in range(args.rounds):
            # Short slices, alternating, so that drift on a shared machine hits all three alike.
            times: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(args.slices):
                for name, call in targets.items():
                    _time(call, args.slice, times[name])
            row = {f"{name}_ms": 1000 * statistics.median(t) for name, t in times.items()}
            for name in clients:
                row[f"{name}_overhead_ms"] = row[f"{name}_ms"] - row["bare_ms"]
            row["resnet-serve_over_minimal_ms"] = row["resnet-serve_ms"] - row["minimal-aio_ms"]
            rounds.append(row)
            shown = "; ".join(
                f"{name} {row[f'{name}_ms']:.2f} ms ({row[f'{name}_overhead_ms']:+.2f})" for name in clients
            )
            print(f"round {r + 1}: bare {row['bare_ms']:.2f} ms; {shown}", flush=True)
        for client in clients.values():
            client.close()
    finally:
        bare.close()
        for _, process in minimal.values():
            stop(process, timeout_s=5)
        stop(served, timeout_s=30)
    return {
        "model": str(args.model),
        "client": "tritonclient.grpc (sync), one request at a time",
        "rounds": rounds,
        "median_overhead_ms": {
            key[: -len("_overhead_ms")]: statistics.median(r[key] for r in rounds)
            for key in rounds[0]
            if key.endswith("_overhead_ms")
        },
        "median_resnet-serve_over_minimal-aio_ms": statistics.median(
            r["resnet-serve_over_minimal_ms"] for r in rounds
        ),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="an ONNX model from resnet-serve export")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=8, help="alternations per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per target")
    parser.add_argument("--slice", type=float, default=0.5, help="seconds per target per alternation")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads everywhere (0: all cores)")
    parser.add_argument("--minimal-server", choices=("aio", "sync"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"no such model file: {args.model}")
    if args.minimal_server is not None:
        _minimal_server(args.model, args.port, args.threads, args.minimal_server)
        return 0
    result = _measure(args)
    shown = ", ".join(f"{name} {value:+.2f} ms" for name, value in result["median_overhead_ms"].items())
    ours = result["median_resnet-serve_over_minimal-aio_ms"]
    print(
        f"median over {args.rounds} rounds, latency over the bare call at concurrency 1: {shown}; "
        f"resnet-serve over the minimal grpc.aio server {ours:+.2f} ms"
    )
    if args.out is not None:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
