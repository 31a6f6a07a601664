"""The floor under the server's latency overhead: what Python gRPC itself costs, measured side by side.

    python -m lab.grpc_floor --model artifacts/resnet50/model.onnx --rounds 5

Four targets answer the same batch-1 requests, one at a time, in alternating half-second slices so that drift
on a shared machine hits all alike; the three servers are asked through tritonclient's ModelInfer:
- bare: the server's backend class called in-process (what lab/server_overhead.py compares against);
- minimal-aio: the least a grpc.aio server can do (one generic ModelInfer handler that parses the request
  with protobuf, runs the same backend on one worker thread and answers; no batcher, validation, metrics or
  interceptor), started by this script with the hidden `--minimal-server aio`;
- minimal-sync: the same on grpc's thread-pool server, the model run in the handler's own thread;
- resnet-serve: `resnet-serve serve` with its defaults.
Each server's first answer is checked against the bare call. The minimal servers' overhead over bare is the
floor no grpcio server goes below on this machine; resnet-serve minus minimal-aio is our serving layer's cost.
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

from resnet_serve.formats.files import write_json_atomic
from resnet_serve.server.launch import free_port, serve_command, stop

_MB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
SERVICE = "inference.GRPCInferenceService"
_OPTIONS = [("grpc.max_receive_message_length", 64 * _MB), ("grpc.http2.lookahead_bytes", 16 * _MB)]


# ------------------------------------------------------------------------------------------ minimal server


def _minimal_server(model: Path, port: int, threads: int, kind: str) -> None:
    """Serve ModelInfer and ServerReady for `model` on `port` until killed (`kind`: "aio" or "sync")."""
    import grpc

    from resnet_serve.formats.datatypes import numpy_to_kserve
    from resnet_serve.protos import grpc_service_pb2 as pb
    from resnet_serve.runtime.factory import backend_for, create_backend

    backend = create_backend(model, backend_for(model, "auto"), "cpu", threads)
    spec = backend.info.inputs[0]
    ready = bytes(pb.ServerReadyResponse(ready=True).SerializeToString())

    def feeds(data: bytes) -> dict[str, np.ndarray]:
        request = pb.ModelInferRequest.FromString(data)
        shape = tuple(request.inputs[0].shape)
        return {spec.name: np.frombuffer(request.raw_input_contents[0], dtype=spec.dtype).reshape(shape)}

    def answer(outputs: dict[str, np.ndarray]) -> bytes:
        response = pb.ModelInferResponse(model_name="model", model_version="1")
        for name, value in outputs.items():
            response.outputs.add(name=name, datatype=numpy_to_kserve(value.dtype), shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return bytes(response.SerializeToString())

    def service(infer: Callable[..., Any], is_ready: Callable[..., Any]) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
                "ServerReady": grpc.unary_unary_rpc_method_handler(is_ready),
            },
        )

    if kind == "sync":

        def infer_here(data: bytes, context: Any) -> bytes:
            return answer(backend.infer(feeds(data)))

        sync_server = grpc.server(ThreadPoolExecutor(max_workers=4), options=_OPTIONS)
        sync_server.add_generic_rpc_handlers((service(infer_here, lambda data, context: ready),))
        sync_server.add_insecure_port(f"127.0.0.1:{port}")
        sync_server.start()
        sync_server.wait_for_termination()
        return

    worker = ThreadPoolExecutor(max_workers=1)  # one thread, as one resnet-serve instance has

    async def infer_on_worker(data: bytes, context: Any) -> bytes:
        loop = asyncio.get_running_loop()
        return answer(await loop.run_in_executor(worker, backend.infer, feeds(data)))

    async def is_ready(data: bytes, context: Any) -> bytes:
        return ready

    async def main() -> None:
        server = grpc.aio.server(options=_OPTIONS)
        server.add_generic_rpc_handlers((service(infer_on_worker, is_ready),))
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


def one_round(targets: dict[str, Callable[[], object]], args: argparse.Namespace) -> dict[str, float]:
    """The median milliseconds of each target over `args.slices` alternations of `args.slice` seconds each:
    short slices, alternating, so that drift on a shared machine hits every target alike."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(args.slices):
        for name, call in targets.items():
            _time(call, args.slice, times[name])
    return {f"{name}_ms": 1000 * statistics.median(t) for name, t in times.items()}


def timing_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every alternating-slices measurement takes (this script's and lab/shm_overhead.py's)."""
    parser.add_argument("--model", type=Path, required=True, help="an ONNX model from resnet-serve export")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=8, help="alternations per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per target")
    parser.add_argument("--slice", type=float, default=0.5, help="seconds per target per alternation")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads everywhere (0: all cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    import tritonclient.grpc as triton

    from resnet_serve.formats.datatypes import numpy_to_kserve
    from resnet_serve.runtime.factory import backend_for, create_backend

    bare = create_backend(args.model, backend_for(args.model, "auto"), "cpu", args.threads)
    spec, output = bare.info.inputs[0], bare.info.outputs[0].name
    shape = [1, *spec.shape[1:]]
    array = np.random.default_rng(0).standard_normal(shape).astype(spec.dtype)
    tensor = triton.InferInput(spec.name, shape, numpy_to_kserve(spec.dtype))
    tensor.set_data_from_numpy(array)
    outputs = [triton.InferRequestedOutput(output)]

    minimal = {
        kind: (port, subprocess.Popen(
            [sys.executable, "-m", "lab.grpc_floor", "--minimal-server", kind, "--port", str(port),
             "--model", str(args.model), "--threads", str(args.threads)],
            cwd=ROOT,  # lab/ is not installed: it imports from the repository root
        ))
        for kind, port in (("aio", free_port()), ("sync", free_port()))
    }  # fmt: skip
    serve_port = free_port()
    served = subprocess.Popen(
        serve_command(
            "--model", f"model={args.model}", "--host", "127.0.0.1", "--grpc-port", str(serve_port),
            "--metrics-port", "-1", "--http-port", "-1", "--intra-op-threads", str(args.threads),
            "--log-level", "warning",
        )
    )  # fmt: skip
    targets: dict[str, Callable[[], object]] = {"bare": lambda: bare.infer({spec.name: array})}
    rounds: list[dict[str, float]] = []
    clients: dict[str, Any] = {}
    try:
        for kind, (port, process) in minimal.items():
            clients[f"minimal-{kind}"] = _client(port, process)
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
            row = one_round(targets, args)
            for name in clients:
                row[f"{name}_overhead_ms"] = row[f"{name}_ms"] - row["bare_ms"]
            row["resnet-serve_over_minimal-aio_ms"] = row["resnet-serve_ms"] - row["minimal-aio_ms"]
            rounds.append(row)
            shown = "; ".join(
                f"{name} {row[f'{name}_ms']:.2f} ms ({row[f'{name}_overhead_ms']:+.2f})" for name in clients
            )
            print(f"round {r + 1}: bare {row['bare_ms']:.2f} ms; {shown}", flush=True)
    finally:
        for client in clients.values():
            client.close()
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
            r["resnet-serve_over_minimal-aio_ms"] for r in rounds
        ),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.grpc_floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    timing_arguments(parser)
    parser.add_argument("--minimal-server", choices=("aio", "sync"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"no such model file: {args.model}")
    if args.minimal_server is not None:
        _minimal_server(args.model, args.port, args.threads, args.minimal_server)
        return 0
    from tritonclient.utils import InferenceServerException

    try:
        result = _measure(args)
    except InferenceServerException as exc:  # a server failed a request mid-run
        raise SystemExit(f"grpc_floor: a request failed: {exc}") from None
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
