"""HTTP/REST against gRPC for the same request on the same server: tritonclient.http.aio (binary tensor data
extension, what it sends by default) and tritonclient.grpc.aio, each over a bare in-process call of the model.

    python -m lab.http_overhead --model artifacts/resnet50/model.onnx --out artifacts/bench/http_overhead.json
    python -m lab.http_overhead --model pool224 --out artifacts/bench/http_overhead_pool224.json

One server (`resnet-serve serve`, gRPC and HTTP ports both open); rounds alternate the bare call and the two
protocols so that a noisy neighbour hits them alike; each figure is the median over rounds:
- the server process's CPU time per request for each protocol (from /proc; on a loaded machine the one
  figure that the neighbours hardly move);
- concurrency 1: each protocol's median latency minus the bare batch-1 median, and HTTP minus gRPC
  (issue 13's target: HTTP binary within 0.5 ms of gRPC);
- concurrency 16: HTTP throughput over gRPC throughput (target: >= 0.95).
`--model pool224` serves a model with ResNet-50's tensors (FP32 [N, 3, 224, 224] in, [N, 1000] out) that
only average-pools and multiplies (about 0.1 ms): the transports' cost stands out from the model's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from lab.goodput import cpu_seconds  # the server's whole process tree (workers too)
from lab.server_overhead import wait_ready
from resnet_serve.bench import baseline
from resnet_serve.bench.loadgen import Closed, StepResult, Timing, run_step
from resnet_serve.bench.senders import Reply, Sender, kserve_sender
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.server.launch import free_port, serve_command, stop

READY_TIMEOUT_S = 180.0


class Counted(Sender):
    """Counts the requests a sender sent (warm-up included), to divide the server's CPU time by."""

    def __init__(self, inner: Sender) -> None:
        self.inner = inner
        self.sent = 0
        self.description = inner.description

    async def send(self) -> Reply:
        self.sent += 1
        return await self.inner.send()

    async def close(self) -> None:
        await self.inner.close()


def write_pool224(path: Path) -> Path:
    """FP32 [N, 3, 224, 224] → global average pool → Gemm → [N, 1000]: ResNet-50's tensors, little compute."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from resnet_serve.formats.metadata import LABELS_KEY

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (1000, 3)).astype(np.float32)
    b = np.zeros(1000, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "pool224",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key=LABELS_KEY, value=json.dumps([str(i) for i in range(1000)]))
    onnx.save(model, str(path))
    return path


async def _measure(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    grpc_port, http_port = free_port(), free_port()
    command = serve_command(
        "--model", f"model={model}", "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--metrics-port", "-1", "--max-batch-size", "16",
        "--intra-op-threads", str(args.threads), "--log-level", "warning",
    )  # fmt: skip
    server = subprocess.Popen(command)
    rounds: list[dict[str, Any]] = []
    try:
        import tritonclient.http.aio as http_aio

        client = http_aio.InferenceServerClient(f"127.0.0.1:{http_port}")
        await wait_ready(client, server, "http_overhead", READY_TIMEOUT_S)
        senders = {
            "grpc": Counted(await kserve_sender(f"127.0.0.1:{grpc_port}", "model", None, 1, 60.0)),
            # bench's own KServe sender over HTTP (`resnet-serve bench -i http`): binary input and output
            "http": Counted(await kserve_sender(f"127.0.0.1:{http_port}", "model", None, 1, 60.0, "http")),
        }
        timing = Timing(args.warmup, args.window, args.max_step_time, 0.10)
        try:
            for r in range(args.rounds):
                bare = baseline.measure(model, [1], args.window, "cpu", args.threads)[0]
                row: dict[str, Any] = {"round": r + 1, "bare_batch1_p50_ms": bare.latency.percentiles["p50"]}
                steps: dict[tuple[str, int], StepResult] = {}
                cpu_us: dict[str, list[float]] = {protocol: [] for protocol in senders}
                for concurrency in (1, args.concurrency):
                    for protocol, sender in senders.items():
                        sent, cpu = sender.sent, cpu_seconds(server.pid)
                        steps[protocol, concurrency] = await run_step(sender, Closed(concurrency), timing)
                        per_request = (cpu_seconds(server.pid) - cpu) / max(1, sender.sent - sent)
                        cpu_us[protocol].append(per_request * 1e6)
                for protocol in senders:
                    c1, cn = steps[protocol, 1], steps[protocol, args.concurrency]
                    row[f"{protocol}_c1_p50_ms"] = c1.latency.percentiles["p50"]
                    row[f"{protocol}_c1_overhead_ms"] = (
                        c1.latency.percentiles["p50"] - row["bare_batch1_p50_ms"]
                    )
                    row[f"{protocol}_c{args.concurrency}_throughput"] = cn.throughput
                    row[f"{protocol}_errors"] = {**c1.errors, **cn.errors}
                    row[f"{protocol}_server_cpu_us_per_request"] = statistics.mean(cpu_us[protocol])
                row["http_minus_grpc_c1_ms"] = row["http_c1_p50_ms"] - row["grpc_c1_p50_ms"]
                row["http_over_grpc_throughput"] = (
                    row[f"http_c{args.concurrency}_throughput"] / row[f"grpc_c{args.concurrency}_throughput"]
                )
                rounds.append(row)
                print(
                    f"round {r + 1}: bare b1 p50 {row['bare_batch1_p50_ms']:.2f} ms; c1 p50 gRPC "
                    f"{row['grpc_c1_p50_ms']:.2f} ms (+{row['grpc_c1_overhead_ms']:.2f}), HTTP "
                    f"{row['http_c1_p50_ms']:.2f} ms (+{row['http_c1_overhead_ms']:.2f}), HTTP - gRPC "
                    f"{row['http_minus_grpc_c1_ms']:+.2f} ms; c{args.concurrency} gRPC "
                    f"{row[f'grpc_c{args.concurrency}_throughput']:.1f}/s, HTTP "
                    f"{row[f'http_c{args.concurrency}_throughput']:.1f}/s "
                    f"({row['http_over_grpc_throughput']:.3f}x); server CPU per request gRPC "
                    f"{row['grpc_server_cpu_us_per_request']:.0f} us, HTTP "
                    f"{row['http_server_cpu_us_per_request']:.0f} us",
                    flush=True,
                )
        finally:
            for sender in senders.values():
                await sender.close()
    finally:
        stop(server, timeout_s=30)

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    return {
        "model": args.model,
        "rounds": rounds,
        "median_grpc_c1_overhead_ms": median("grpc_c1_overhead_ms"),
        "median_http_c1_overhead_ms": median("http_c1_overhead_ms"),
        "median_http_minus_grpc_c1_ms": median("http_minus_grpc_c1_ms"),
        "median_http_over_grpc_throughput": median("http_over_grpc_throughput"),
        "median_grpc_server_cpu_us_per_request": median("grpc_server_cpu_us_per_request"),
        "median_http_server_cpu_us_per_request": median("http_server_cpu_us_per_request"),
        "settings": {
            "threads": args.threads,
            "concurrency": args.concurrency,
            "window_s": args.window,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.http_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="an ONNX model with a [N, 3, 224, 224] input, or pool224"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads, server and bare (0: all)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--max-step-time", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = write_pool224(Path(tmp) / "pool224.onnx") if args.model == "pool224" else Path(args.model)
        if not model.is_file():
            parser.error(f"no such model file: {model}")
        result = asyncio.run(_measure(model, args))
    print(
        f"median over {args.rounds} rounds: concurrency 1 over the bare call: gRPC "
        f"{result['median_grpc_c1_overhead_ms']:+.2f} ms, "
        f"HTTP {result['median_http_c1_overhead_ms']:+.2f} ms "
        f"(HTTP - gRPC {result['median_http_minus_grpc_c1_ms']:+.2f} ms, target <= 0.5); concurrency "
        f"{args.concurrency}: HTTP {result['median_http_over_grpc_throughput']:.3f}x gRPC's throughput "
        f"(target >= 0.95); server CPU per request gRPC "
        f"{result['median_grpc_server_cpu_us_per_request']:.0f} us, "
        f"HTTP {result['median_http_server_cpu_us_per_request']:.0f} us"
    )
    if args.out is not None:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
