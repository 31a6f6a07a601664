"""Goodput under overload: does the image API keep its throughput when offered ten times what it can serve?

The server runs pinned to core 0 (`taskset -c 0`), this load generator on core 1 (the README's setup).
First a closed-loop sweep (bench.loadgen, as `resnet-serve bench --concurrency` runs it) finds the best
no-overload throughput C; then an open loop offers `--overload` × C requests/s and counts the successful
answers per second, the goodput. A request refused for a full queue (UNAVAILABLE) should cost the server
almost nothing: it is refused before its image is decoded (issue #15; target goodput ≥ 80 % of C at 10×).

    python -m lab.goodput --seconds 20 --out artifacts/bench/goodput.json

Without `--model` a model is generated: 3×32×32 RGB input, ~20 ms of matrix products per image on one core
(`--slow-layers`), served with sklearn's 256×256 JPEG photo crops. The server takes one image per batch
(`--max-batch-size 1`), so its capacity does not depend on how full batches get, and 10× that capacity stays
within what a Python load generator on one core can send (~1000 requests/s; the JSON's `sent_rate` says
whether it did). Benchmarks print numbers; nothing asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.serving_floor import process_tree_cpu
from resnet_serve.bench.loadgen import Closed, Open, StepResult, Timing, run_step
from resnet_serve.bench.senders import ImageSender
from resnet_serve.bench.workload import load_images
from resnet_serve.client.aio import AsyncClient
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.formats.metadata import LABELS_KEY, PREPROCESS_KEY
from resnet_serve.formats.preprocess import IMAGENET
from resnet_serve.server.launch import serve_command, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
MODEL = "goodput"
SERVER_CORE, CLIENT_CORE = 0, 1


def write_model(path: Path, slow_layers: int) -> Path:
    """3×32×32 RGB → conv → `slow_layers` 1024×1024 matrix products → 10 logits, with our metadata."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w_conv": rng.normal(0, 0.2, (4, 3, 3, 3)),
        "w_in": rng.normal(0, 0.05, (4 * 32 * 32, 1024)),
        "w_h": np.eye(1024) + rng.normal(0, 0.01, (1024, 1024)),
        "w_fc": rng.normal(0, 0.1, (1024, 10)),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_in"], ["h0"]),
        *(helper.make_node("MatMul", [f"h{i}", "w_h"], [f"h{i + 1}"]) for i in range(slow_layers)),
        helper.make_node("MatMul", [f"h{slow_layers}", "w_fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "goodput",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    preprocess = {**IMAGENET, "resize": 32, "crop": 32}  # ImageNet statistics, at 32×32
    for key, value in {
        LABELS_KEY: json.dumps([str(i) for i in range(10)]),
        PREPROCESS_KEY: json.dumps(preprocess),
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@dataclass(frozen=True)
class Server:
    target: str
    pid: int
    pinned: bool


@contextmanager
def pinned_server(model: Path, extra: list[str], log_path: Path) -> Iterator[Server]:
    """`resnet-serve serve` on loopback, pinned to SERVER_CORE with taskset when there are two cores."""
    args = (
        "--model",
        f"{MODEL}={model}",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
        *extra,
    )
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    command = (["taskset", "-c", str(SERVER_CORE)] if pinned else []) + serve_command(*args)
    ready_file = log_path.with_suffix(".ready.json")
    command += ["--ready-file", str(ready_file)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Server(wait_ready(process, ready_file, log=log_path).grpc_target, process.pid, pinned)
    finally:
        stop(process)


def pin_client() -> bool:
    """Run this load generator on CLIENT_CORE (when the machine has it)."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {CLIENT_CORE})
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far (Linux /proc), in seconds, of the server process and every process
    under it: `serve --workers N` does its protocol work in worker processes, whose time the engine's own
    /proc entry does not hold (this counted only the engine's until 2026-12-07)."""
    return sum(seconds for seconds, _ in process_tree_cpu(pid).values())


def step_summary(step: StepResult, cpu_s: float | None = None) -> dict[str, Any]:
    out = {
        "load": step.load.label,
        "throughput": round(step.throughput, 1),
        "p50_ms": round(step.latency["p50"], 2),
        "p99_ms": round(step.latency["p99"], 2),
        "errors": step.errors,
        "stable": step.stable,
        "offered_rate": step.offered_rate,
        "sent_rate": step.sent_rate,
    }
    if cpu_s is not None:
        out["server_cpu_s"] = round(cpu_s, 2)
    return out


async def sender_for(target: str, images: str) -> ImageSender:
    client = AsyncClient(target, model=MODEL, timeout=10.0, retry=None)  # no retries: see every refusal
    await client.wait_until_ready(timeout=30.0)
    description, encoded = load_images(images, channels=3)
    return ImageSender(client, encoded, description=description)


async def capacity(
    sender: ImageSender, pid: int, levels: list[int], timing: Timing
) -> tuple[float, float, list[dict[str, Any]]]:
    """The best closed-loop throughput without errors, the server's CPU seconds per request in that step,
    and every step of the sweep."""
    steps = []
    best = cpu_per_request = 0.0
    for concurrency in levels:
        cpu_start = cpu_seconds(pid)
        step = await run_step(sender, Closed(concurrency), timing)
        cpu = cpu_seconds(pid) - cpu_start
        steps.append(step_summary(step, cpu))
        print(f"  concurrency {concurrency}: {step.throughput:.1f} infer/s, errors {step.errors}", flush=True)
        if not step.errors and step.throughput > best:
            best = step.throughput
            # CPU over the whole step (warm-up and drain included) per request answered in it.
            cpu_per_request = cpu / max(1.0, step.throughput * (step.duration_s + timing.warmup_s))
    return best, cpu_per_request, steps


async def measure(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    sender = await sender_for(server.target, args.images)
    try:
        sweep = Timing(warmup_s=1.0, window_s=args.window, max_s=args.window * 4)
        print("closed-loop sweep (no overload):", flush=True)
        best, cpu_per_success, steps = await capacity(sender, server.pid, args.concurrency, sweep)
        if best <= 0:
            raise RuntimeError("no step of the sweep ran without errors")
        rate = args.overload * best
        print(f"open loop at {args.overload:g}x = {rate:.0f} requests/s for {args.seconds:g} s:", flush=True)
        cpu_start = cpu_seconds(server.pid)
        over = await run_step(
            sender,
            Open(rate),
            Timing(warmup_s=2.0, window_s=args.seconds / 3, max_s=args.seconds, drain_s=10.0),
        )
        cpu = cpu_seconds(server.pid) - cpu_start
        overload = step_summary(over, cpu)
    finally:
        await sender.close()
    goodput = over.throughput / best
    # What a refusal costs the server: the step's CPU less what its successes cost at no overload.
    seconds = over.duration_s + 2.0
    refused = sum(over.errors.values()) / over.duration_s * seconds
    refusal_ms = (cpu - cpu_per_success * over.throughput * seconds) / max(1.0, refused) * 1e3
    return {
        "best_throughput": round(best, 1),
        "overload_factor": args.overload,
        "goodput": round(over.throughput, 1),
        "goodput_ratio": round(goodput, 3),
        "server_cpu_ms_per_success": round(cpu_per_success * 1e3, 2),
        "server_cpu_ms_per_refusal_estimate": round(refusal_ms, 3),
        "target_ratio": 0.8,
        "sweep": steps,
        "overload": overload,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lab.goodput",
        description="Image API goodput at N× overload vs its best no-overload throughput (server on core 0).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, help="ONNX model with resnet-serve metadata (default: generated)"
    )
    parser.add_argument(
        "--slow-layers", type=int, default=200, help="generated model: 1024×1024 products per image"
    )
    parser.add_argument(
        "--images", default="photos", help="digits, photos, a folder or a glob (bench --images)"
    )
    parser.add_argument("--overload", type=float, default=10.0, help="offered rate ÷ best throughput")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds of the overload step")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per sweep window")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 2, 4, 8],
        help="sweep levels",
    )
    parser.add_argument("--max-queue-size", type=int, default=16, help="the server's queue bound")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `serve` argument (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/goodput.json"))
    return parser.parse_args(argv)


def server_args(args: argparse.Namespace) -> list[str]:
    return [
        "--intra-op-threads", "1", "--preprocess-threads", "1",
        "--max-batch-size", "1", "--max-queue-size", str(args.max_queue_size), *args.server_arg,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="goodput-") as tmp:
        model = args.model or write_model(Path(tmp) / "model.onnx", args.slow_layers)
        with pinned_server(model, server_args(args), Path(tmp) / "server.log") as server:
            client_pinned = pin_client()
            result = asyncio.run(measure(args, server))
    result["config"] = {
        "command": " ".join(["python -m lab.goodput", *(argv if argv is not None else sys.argv[1:])]),
        "model": str(args.model) if args.model else f"generated ({args.slow_layers} slow layers)",
        "images": args.images,
        "server_args": server_args(args),
        "server_pinned_core": SERVER_CORE if server.pinned else None,
        "client_pinned_core": CLIENT_CORE if client_pinned else None,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }
    print(
        f"best no-overload throughput {result['best_throughput']:.1f}/s; at {args.overload:g}x overload "
        f"{result['goodput']:.1f}/s succeeded = {result['goodput_ratio']:.1%} (target >= 80 %); "
        f"errors {result['overload']['errors']}; server CPU per answered request "
        f"{result['server_cpu_ms_per_success']:.2f} ms, per refused one ~"
        f"{result['server_cpu_ms_per_refusal_estimate']:.2f} ms"
    )
    return write(args.out, result)


def write(out: Path, result: dict[str, Any]) -> int:
    """The result as JSON at `out` (atomically); 0, the exit code."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
