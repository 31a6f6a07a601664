"""What serving costs on top of the model: the server (KServe v2 tensors from tritonclient) against the same
ONNX model called in-process with the server's own backend class, measured side by side in one run.

    python -m lab.server_overhead --model artifacts/resnet50/model.onnx --out artifacts/bench/overhead.json

Rounds alternate the two so that a noisy neighbour hits both alike; each figure is the median over rounds:
- concurrency 1: the server's median latency minus the bare batch-1 median (target: within 1 ms);
- concurrency 16: the server's throughput over the best bare throughput at any batch size (target: >= 95 %).
  Beside it, the same ratio against an independent re-measurement of the winning batch size, since the
  maximum of several noisy measurements is biased upwards.
The server runs as a subprocess (`resnet-serve serve`), with the bare session idle meanwhile and vice versa.

Where the concurrency-N shortfall goes, from CPU readings over the whole step (warm-up and drain included):
the server's CPU (its process and every child, /proc), this process's (the tritonclient load generator) and
the images the server counted (ModelStatistics). Over that step, served ÷ in-process is exactly
    (server's cores ÷ the in-process run's cores) × (in-process CPU per image ÷ server's CPU per image):
the CPU the server got, against what the model alone used, times how much of it went to the model. The
first falls short by what the client and idle moments take; the second by the serving work per request
(protocol, copies, the engine hop) and any loss from smaller batches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from lab.serving_floor import model_counts, process_tree_cpu
from resnet_serve.bench import baseline
from resnet_serve.bench.loadgen import Closed, Timing, run_step
from resnet_serve.bench.senders import kserve_sender
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.server.launch import free_port, serve_command, stop


def _start_server(model: Path, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    cmd = serve_command(
        "--model", f"{args.name}={model}",
        "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "-1", "--http-port", "-1",
        "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms),
        "--intra-op-threads", str(args.server_threads if args.server_threads is not None else args.threads),
        "--instances", str(args.instances), "--log-level", "warning", *args.serve_arg,
    )  # fmt: skip
    return subprocess.Popen(cmd)


async def wait_ready(
    client: Any, server: subprocess.Popen[bytes], who: str, timeout_s: float = 120.0
) -> None:
    """Poll `client` (a tritonclient gRPC or HTTP aio client, closed here) until the server is ready; exit
    with `who`'s message when the server exits or stays unready."""
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"{who}: the server exited with code {server.returncode}")
            try:
                if await client.is_server_ready():
                    return
            except Exception:  # not listening yet
                pass
            await asyncio.sleep(0.25)
        raise SystemExit(f"{who}: the server did not become ready")
    finally:
        await client.close()


def server_cpu_s(server: subprocess.Popen[bytes]) -> float:
    return sum(seconds for seconds, _ in process_tree_cpu(server.pid).values())


def cpu_split(
    served: int, seconds: float, server_s: float, client_s: float, inprocess: baseline.BaselineResult
) -> dict[str, float]:
    """Where the CPU of a step went, against the in-process run `inprocess` (see the module's text): `served`
    images in `seconds`, with `server_s` of the server's CPU and `client_s` of the load generator's."""
    per_image = inprocess.cpu_s / (inprocess.batch_size * inprocess.runs)
    split = {
        "step_seconds": seconds,
        "step_served": served,
        "step_ratio": served / seconds / inprocess.throughput,
        "inprocess_batch": inprocess.batch_size,
        "server_cores": server_s / seconds,
        "client_cores": client_s / seconds,
        "inprocess_cores": inprocess.cores,
        "inprocess_cpu_ms_per_image": 1e3 * per_image,
        "server_cpu_ms_per_image": 1e3 * server_s / served if served else float("inf"),
    }
    split["cpu_share"] = split["server_cores"] / inprocess.cores if inprocess.cores else 0.0
    split["cpu_efficiency"] = per_image * served / server_s if server_s else 0.0
    return split


def split_line(split: dict[str, float]) -> str:
    return (
        f"{100 * split['step_ratio']:.1f} % of batch {split['inprocess_batch']:.0f} in-process = CPU share "
        f"{split['cpu_share']:.3f} (server "
        f"{split['server_cores']:.2f} cores against the model's {split['inprocess_cores']:.2f} in-process; "
        f"client {split['client_cores']:.2f}; {len(os.sched_getaffinity(0))} cores) x CPU per image "
        f"{split['cpu_efficiency']:.3f} (in-process {split['inprocess_cpu_ms_per_image']:.2f} ms, served "
        f"{split['server_cpu_ms_per_image']:.2f} ms)"
    )


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = _start_server(args.model, port, args)
    rounds: list[dict[str, Any]] = []
    try:
        import grpc
        from tritonclient.grpc import aio as triton_aio

        from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc

        await wait_ready(triton_aio.InferenceServerClient(url=target), server, "server_overhead")
        sender = await kserve_sender(target, args.name, None, 1, 60.0)
        channel = grpc.insecure_channel(target)  # the server's own count of the images it served
        stats = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        timing = Timing(args.warmup, args.window, args.max_step_time, 0.10)
        try:
            for r in range(args.rounds):
                bare = baseline.measure(args.model, args.batch_sizes, args.window, "cpu", args.threads)
                c1 = await run_step(sender, Closed(1), timing)
                served0, server0 = model_counts(stats, args.name)[0], server_cpu_s(server)
                client0, wall0 = time.process_time(), time.monotonic()
                c16 = await run_step(sender, Closed(args.concurrency), timing)
                wall, client_s = time.monotonic() - wall0, time.process_time() - client0
                server_s = server_cpu_s(server) - server0
                served = model_counts(stats, args.name)[0] - served0
                b1 = next(b for b in bare if b.batch_size == 1)
                best = max(bare, key=lambda b: b.throughput)
                # The largest of several noisy measurements overstates the true best; an independent
                # measurement of the winning batch size does not (reported beside, never instead).
                again = baseline.measure(args.model, [best.batch_size], args.window, "cpu", args.threads)[0]
                row: dict[str, Any] = {
                    "round": r + 1,
                    "bare_batch1_p50_ms": b1.latency.percentiles["p50"],
                    "bare_throughput": {str(b.batch_size): b.throughput for b in bare},
                    "bare_best_throughput": best.throughput,
                    "bare_best_batch": best.batch_size,
                    "server_c1_p50_ms": c1.latency.percentiles["p50"],
                    "server_c1_errors": c1.errors,
                    f"server_c{args.concurrency}_throughput": c16.throughput,
                    f"server_c{args.concurrency}_errors": c16.errors,
                    f"server_c{args.concurrency}_requests": c16.requests,  # answered OK in the kept windows
                    f"server_c{args.concurrency}_p99_ms": c16.latency.percentiles["p99"],
                }
                row["latency_overhead_ms"] = row["server_c1_p50_ms"] - row["bare_batch1_p50_ms"]
                row["throughput_ratio"] = c16.throughput / best.throughput
                row["bare_best_remeasured_throughput"] = again.throughput
                row["throughput_ratio_remeasured"] = c16.throughput / again.throughput
                row["cpu_split"] = split = cpu_split(served, wall, server_s, client_s, again)
                rounds.append(row)
                print(
                    f"round {r + 1}: bare b1 p50 {row['bare_batch1_p50_ms']:.2f} ms, server c1 p50 "
                    f"{row['server_c1_p50_ms']:.2f} ms (+{row['latency_overhead_ms']:.2f} ms); bare best "
                    f"{best.throughput:.1f}/s at batch {best.batch_size}, server c{args.concurrency} "
                    f"{c16.throughput:.1f}/s ({100 * row['throughput_ratio']:.1f} %; "
                    f"{100 * row['throughput_ratio_remeasured']:.1f} % of batch {best.batch_size} "
                    f"re-measured at {again.throughput:.1f}/s)",
                    flush=True,
                )
                print(f"  the whole c{args.concurrency} step: {split_line(split)}", flush=True)
        finally:
            channel.close()
            await sender.close()
    finally:
        stop(server, timeout_s=30)
    return {
        "model": str(args.model),
        "rounds": rounds,
        "median_latency_overhead_ms": statistics.median(r["latency_overhead_ms"] for r in rounds),
        "median_throughput_ratio": statistics.median(r["throughput_ratio"] for r in rounds),
        "median_throughput_ratio_remeasured": statistics.median(
            r["throughput_ratio_remeasured"] for r in rounds
        ),
        "median_cpu_split": {
            key: statistics.median(r["cpu_split"][key] for r in rounds)
            for key in ("step_ratio", "cpu_share", "cpu_efficiency", "server_cores", "client_cores")
        },
        "settings": {
            "threads": args.threads,
            "server_threads": args.server_threads,
            "instances": args.instances,
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_ms": args.max_queue_delay_ms,
            "concurrency": args.concurrency,
            "window_s": args.window,
            "cpu_count": os.cpu_count(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.server_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="an ONNX model from resnet-serve export")
    parser.add_argument("--name", default="model", help="the name it is served under")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16]
    )
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for both (0: all cores)")
    parser.add_argument("--instances", type=int, default=1, help="server execution instances")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=None,
        help="server intra-op threads per instance (default: --threads)",
    )
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument(
        "--serve-arg", action="append", default=[], metavar="ARG",
        help="one more `serve` argument (repeat; e.g. --serve-arg=--workers --serve-arg=1)",
    )  # fmt: skip
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--max-step-time", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"no such model file: {args.model}")
    result = asyncio.run(_measure(args))
    print(
        f"median over {args.rounds} rounds: latency overhead at concurrency 1 "
        f"{result['median_latency_overhead_ms']:+.2f} ms (target <= 1 ms); throughput at concurrency "
        f"{args.concurrency} {100 * result['median_throughput_ratio']:.1f} % of the best in-process "
        f"throughput (target >= 95 %); {100 * result['median_throughput_ratio_remeasured']:.1f} % of the "
        "best batch size re-measured"
    )
    split = result["median_cpu_split"]
    print(
        f"where it went (medians over the whole steps): CPU share {split['cpu_share']:.3f} (server "
        f"{split['server_cores']:.2f} cores, client {split['client_cores']:.2f}) x CPU per image "
        f"{split['cpu_efficiency']:.3f}"
    )
    if args.out is not None:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
