"""How much do metrics cost? The server's throughput with metrics on and off, measured in one run.

Two measurements, both printed and written as JSON:

1. API level: the per-request metric calls the server makes (in_flight, request_done with three phases,
   a share of batch_executed and set_queue_depth) timed in a tight loop, enabled vs disabled, in ns.
2. Server level: `resnet-serve serve` started with `--metrics true` and with `--metrics false`, in
   alternating rounds (on, off, off, on, ...) so drift on a shared machine hits both alike; each round
   runs a closed loop of gRPC Classify calls and counts completed requests per second, and the server
   process' CPU time per request (from /proc): on a busy shared machine throughput swings with the
   neighbours' load, CPU time per request much less. The model is tiny by default (8x8 digits,
   microseconds of compute), the worst case for relative metrics overhead.

    python -m lab.metrics_overhead --rounds 4 --seconds 8 --out artifacts/bench/metrics_overhead.json

Target (docs/metrics.md): at most 2 % throughput difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from lab.goodput import cpu_seconds  # the server's whole process tree (workers too)
from resnet_serve.formats.metadata import LABELS_KEY, PREPROCESS_KEY
from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.server.launch import serving, wait_ready
from resnet_serve.server.observability.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench"


# ---------------------------------------------------------------------------------------------- API level


def api_cost_ns(enabled: bool, n: int, batch: int = 8, repeats: int = 5) -> float:
    """CPU ns of the metric calls one request causes, as the image service and batcher make them: the best
    of `repeats` loops, in this thread's CPU time, so that other processes' load adds as little as it can."""
    model = ServerMetrics(enabled=enabled).model("m", "1")
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time_ns()
        for i in range(n):
            with model.in_flight():
                model.set_queue_depth(i & 7)
                if i % batch == 0:
                    model.batch_executed(batch, 0.002)
                model.request_done("success", 0.004, 0.001, 0.0005, 0.002)
        best = min(best, (time.thread_time_ns() - start) / n)
    return best


# ------------------------------------------------------------------------------------------- server level


def write_tiny_onnx(path: Path) -> Path:
    """A 10-class 8x8 grayscale classifier (conv 3x3 → relu → gemm) with resnet_serve metadata."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w_conv"),
        numpy_helper.from_array(rng.normal(0, 0.2, (10, 256)).astype(np.float32), "w_fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w_fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        LABELS_KEY: json.dumps([str(i) for i in range(10)]),
        PREPROCESS_KEY: json.dumps(
            {"color": "L", "resize": 8, "crop": 8, "interpolation": "bilinear", "mean": [0.5], "std": [0.25]}
        ),
    }
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@contextmanager
def running_server(model: Path, metrics: bool, extra: list[str], log_path: Path) -> Iterator[tuple[str, int]]:
    args = (
        "--model", f"{MODEL}={model}",
        "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "-1",
        "--metrics", "true" if metrics else "false", *extra,
    )  # fmt: skip
    ready_file = log_path.with_suffix(".ready.json")
    with (
        log_path.open("w") as log,
        serving(
            *args, "--ready-file", str(ready_file), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        ) as process,
    ):
        yield wait_ready(process, ready_file, 60, log=log_path).grpc_target, process.pid


async def closed_loop(
    target: str, pid: int, images: list[bytes], concurrency: int, seconds: float
) -> dict[str, float]:
    """Requests completed per second by `concurrency` workers after a one-second warm-up, and the server's
    CPU time per completed request."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
        counting = False
        done = errors = 0

        async def worker(offset: int) -> None:
            nonlocal done, errors
            i = offset
            while True:
                try:
                    await stub.Classify(pb.ClassifyRequest(model=MODEL, image=images[i % len(images)]))
                    done += counting
                except grpc.aio.AioRpcError:
                    errors += counting
                i += concurrency

        tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        await asyncio.sleep(1.0)
        counting, start, cpu_start = True, time.perf_counter(), cpu_seconds(pid)
        await asyncio.sleep(seconds)
        counting, elapsed, cpu = False, time.perf_counter() - start, cpu_seconds(pid) - cpu_start
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "throughput_rps": done / elapsed,
        "cpu_us_per_request": cpu / max(done, 1) * 1e6,
        "errors": errors,
    }


@dataclass
class Round:
    metrics: bool
    throughput_rps: float
    cpu_us_per_request: float
    errors: int


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lab.metrics_overhead",
        description="Server throughput with metrics on vs off (and the metric calls' own cost), in one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, help="ONNX model to serve (default: a generated tiny 8x8 model)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds per setting, alternating on/off")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight from the client")
    parser.add_argument("--api-calls", type=int, default=50_000, help="iterations of each API-level loop")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra flag for `resnet-serve serve`, repeatable (e.g. --server-arg=--max-queue-delay-ms=1)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.concurrency < 1 or args.api_calls < 1:
        parser.error("--rounds, --seconds, --concurrency and --api-calls must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from resnet_serve.bench.workload import digit_pngs

    api = {"enabled_ns": api_cost_ns(True, args.api_calls), "disabled_ns": api_cost_ns(False, args.api_calls)}
    print(f"API level: {api['enabled_ns']:.0f} ns per request enabled, {api['disabled_ns']:.0f} ns disabled")

    images = digit_pngs(256)
    order = [bool((r + r // 2) % 2 == 0) for r in range(2 * args.rounds)]  # on, off, off, on, on, off, ...
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_tiny_onnx(Path(tmp) / "tiny.onnx")
        for metrics in tqdm(order, desc="rounds", unit="round"):
            with running_server(model, metrics, args.server_arg, Path(tmp) / "server.log") as (target, pid):
                got = asyncio.run(closed_loop(target, pid, images, args.concurrency, args.seconds))
            rounds.append(
                Round(metrics, got["throughput_rps"], got["cpu_us_per_request"], int(got["errors"]))
            )

    on = [r.throughput_rps for r in rounds if r.metrics]
    off = [r.throughput_rps for r in rounds if not r.metrics]
    on_median, off_median = statistics.median(on), statistics.median(off)
    difference = (off_median - on_median) / off_median * 100
    cpu_on = statistics.median(r.cpu_us_per_request for r in rounds if r.metrics)
    cpu_off = statistics.median(r.cpu_us_per_request for r in rounds if not r.metrics)
    cpu_difference = (cpu_on - cpu_off) / cpu_off * 100
    # The API-level cost as a share of the time one request takes at the measured rate on one core.
    api_share = (api["enabled_ns"] - api["disabled_ns"]) * 1e-9 * on_median * 100
    result: dict[str, Any] = {
        "benchmark": "metrics_overhead",
        "model": str(args.model or "generated tiny 8x8 conv"),
        "concurrency": args.concurrency,
        "seconds_per_round": args.seconds,
        "api": api,
        "rounds": [asdict(r) for r in rounds],
        "throughput_on_rps": {"median": on_median, "min": min(on), "max": max(on)},
        "throughput_off_rps": {"median": off_median, "min": min(off), "max": max(off)},
        "difference_percent": difference,
        "server_cpu_us_per_request": {"on": cpu_on, "off": cpu_off},
        "cpu_difference_percent": cpu_difference,
        "load_average": os.getloadavg(),
        "api_cpu_share_percent": api_share,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    print(
        f"server throughput: metrics on {on_median:.0f} req/s (range {min(on):.0f}-{max(on):.0f}), "
        f"off {off_median:.0f} req/s (range {min(off):.0f}-{max(off):.0f}): "
        f"{difference:+.2f} % slower with metrics (target ≤ 2 %)"
    )
    print(
        f"server CPU per request: metrics on {cpu_on:.0f} µs, off {cpu_off:.0f} µs: {cpu_difference:+.2f} %"
    )
    print(f"metric calls at that rate: {api_share:.2f} % of one core (load average {os.getloadavg()[0]:.1f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp_out.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp_out, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
