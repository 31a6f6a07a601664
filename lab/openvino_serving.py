"""OpenVINO against ONNX Runtime, served: ResNet-50 through our gRPC server (KServe v2 FP32 tensors from
tritonclient, closed loop at concurrency 16) on each runtime and precision, beside OpenVINO's own in-process
best, measured in one run so the ratios are fair (issue #17's targets).

    python -m lab.resnet50_model --out artifacts/resnet50/model.onnx
    python -m lab.photos --out artifacts/photos
    resnet-serve quantize artifacts/resnet50/model.onnx --variant ort --images artifacts/photos \\
        --out artifacts/resnet50/model.int8.onnx
    python -m lab.openvino_serving --fp32 artifacts/resnet50/model.onnx \\
        --int8 artifacts/resnet50/model.int8.onnx --out artifacts/bench/openvino_serving.json

Served candidates (one server process each, started as users start it): ONNX Runtime INT8, OpenVINO INT8,
OpenVINO FP32 and OpenVINO BF16 (only where the CPU computes in BF16; elsewhere the row says why, since
OpenVINO would silently run f32). In-process, OpenVINO alone at batch 1/8/16: our backend's synchronous
InferRequest (what a batcher worker does), and OpenVINO's own asynchronous queue in throughput mode with
as many requests as it asks for (`AsyncInferQueue`, its benchmark_app's method) — the best of these is
"OpenVINO's own in-process best". Prints a table and writes JSON; a script, not a test: the numbers depend on
the machine and its load (the JSON records the load average before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lab.server_overhead import wait_ready
from resnet_serve.bench.baseline import timed_runs
from resnet_serve.bench.loadgen import Closed, Timing, run_step
from resnet_serve.bench.senders import kserve_sender
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.runtime import openvino
from resnet_serve.runtime.factory import InstanceOptions, create_backends
from resnet_serve.server.launch import free_port, serve_command, stop

NAME = "resnet50"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def _served(
    label: str,
    model: Path,
    backend: str,
    precision: str,
    instances: int,
    args: argparse.Namespace,
    cache: Path,
) -> dict[str, Any]:
    port = free_port()
    cmd = serve_command(
        "--model", f"{NAME}={model}", "--backend", backend, "--inference-precision", precision,
        "--openvino-cache-dir", str(cache),
        "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "-1",
        "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms),
        "--instances", str(instances), "--log-level", "warning",
        *(["--intra-op-threads", str(args.threads)] if args.threads else []),
    )  # fmt: skip
    server = subprocess.Popen(cmd)
    try:
        from tritonclient.grpc import aio as triton_aio

        client = triton_aio.InferenceServerClient(url=f"127.0.0.1:{port}")
        await wait_ready(client, server, "openvino_serving")
        sender = await kserve_sender(f"127.0.0.1:{port}", NAME, None, 1, 120.0)
        try:
            step = await run_step(
                sender, Closed(args.concurrency), Timing(args.warmup, args.window, args.max_step)
            )
        finally:
            await sender.close()
    finally:
        stop(server, timeout_s=30)
    row = {
        "candidate": label,
        "instances": instances,
        "backend": backend,
        "inference_precision": precision,
        "throughput": step.throughput,
        "p50_ms": step.latency.percentiles["p50"],
        "p99_ms": step.latency.percentiles["p99"],
        "errors": step.errors,
        "stable": step.stable,
    }
    print(
        f"served {label:<22} x{instances} {step.throughput:8.1f} img/s  p50 {row['p50_ms']:7.1f} ms  "
        f"p99 {row['p99_ms']:7.1f} ms  errors {step.errors}",
        flush=True,
    )
    return row


def _sync(
    model: Path, runtime: str, precision: str, threads: int, seconds: float, sizes: list[int]
) -> list[Any]:
    """Our backend called directly, one batch at a time (what one batcher worker does)."""
    (backend,) = create_backends(
        model, runtime, 1, InstanceOptions(intra_op_threads=threads, inference_precision=precision)
    )
    spec = backend.info.inputs[0]
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        x = rng.standard_normal((n, *spec.shape[1:])).astype(np.float32)
        times = timed_runs(backend, {spec.name: x}, seconds)
        rows.append({"method": f"{runtime} sync", "batch_size": n, "throughput": n * len(times) / sum(times)})
    backend.close()
    return rows


def _in_process(model: Path, kind: str, precision: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """OpenVINO alone: our synchronous backend (1 stream, all threads) and its own async throughput queue;
    for INT8 also ONNX Runtime's synchronous session beside it (context, not part of OpenVINO's best)."""
    import openvino as ov

    threads = args.threads * max(args.instances) if args.threads else 0
    rows = _sync(model, "openvino", precision, threads, args.window, args.batch_sizes)
    rng = np.random.default_rng(0)
    core = openvino.core()
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "THROUGHPUT",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = core.compile_model(str(model), "CPU", config)
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    streams = int(compiled.get_property("NUM_STREAMS"))
    port = compiled.inputs[0]
    name, chw = port.get_any_name(), [d.get_length() for d in list(port.get_partial_shape())[1:]]
    for n in args.batch_sizes:
        x = rng.standard_normal((n, *chw)).astype(np.float32)
        queue = ov.AsyncInferQueue(compiled, requests)
        for _ in range(requests):  # warm-up
            queue.start_async({name: x})
        queue.wait_all()
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.window or done < 2 * requests:
            queue.start_async({name: x})
            done += 1
        queue.wait_all()
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "method": f"async queue ({requests} requests, {streams} streams)",
                "batch_size": n,
                "throughput": n * done / elapsed,
            }
        )
    if kind == "int8":
        rows += _sync(model, "onnxruntime", "fp32", threads, args.window, args.batch_sizes)
    for r in rows:
        r["model"], r["precision"] = kind, precision
        print(f"in-process {kind} @{precision:<5} {r['method']:<40} batch {r['batch_size']:>2}: "
              f"{r['throughput']:8.1f} img/s", flush=True)  # fmt: skip
    return rows


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    precisions = openvino.supported_precisions()
    candidates = [
        ("onnxruntime int8", args.int8, "onnxruntime", "fp32"),
        ("openvino int8", args.int8, "openvino", "fp32"),
        ("openvino fp32", args.fp32, "openvino", "fp32"),
        ("openvino bf16", args.fp32, "openvino", "bf16"),
    ]
    served: list[dict[str, Any]] = []
    in_process: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for label, _, _, precision in candidates:
        if precision not in precisions:
            caps = ", ".join(openvino.cpu_capabilities())
            skipped[label] = f"this CPU has no {precision.upper()} (OpenVINO capabilities: {caps})"
            print(f"served {label:<22} skipped: {skipped[label]}", flush=True)
    # Rounds run every candidate in turn, so a noisy neighbour hits them alike; figures are medians.
    with tempfile.TemporaryDirectory(prefix="ov-cache-") as cache:
        for r in range(args.rounds):
            for label, model, backend, precision in candidates:
                if label in skipped:
                    continue
                for instances in args.instances:
                    row = await _served(label, model, backend, precision, instances, args, Path(cache))
                    served.append({**row, "round": r + 1})
            in_process += [{**row, "round": r + 1} for row in _in_process(args.int8, "int8", "fp32", args)]
            if "bf16" in precisions:
                in_process += [
                    {**row, "round": r + 1} for row in _in_process(args.fp32, "fp32", "bf16", args)
                ]
    by: dict[str, float] = {}  # each candidate at its best instance count (median over rounds)
    for label, instances in {(row["candidate"], row["instances"]) for row in served}:
        median = statistics.median(
            row["throughput"] for row in served if (row["candidate"], row["instances"]) == (label, instances)
        )
        by[label] = max(by.get(label, 0.0), median)
    best_int8 = max(
        statistics.median(x["throughput"] for x in in_process if (x["method"], x["batch_size"]) == key)
        for key in {
            (x["method"], x["batch_size"])
            for x in in_process
            if x["model"] == "int8" and not x["method"].startswith("onnxruntime")
        }
    )
    ratios: dict[str, float | str] = {
        "openvino_int8_vs_onnxruntime_int8 (target >= 1.10)": by["openvino int8"] / by["onnxruntime int8"],
        "openvino_int8_served_vs_in_process_best (target >= 0.95)": by["openvino int8"] / best_int8,
        "openvino_int8_vs_openvino_fp32": by["openvino int8"] / by["openvino fp32"],
    }
    key = "openvino_bf16_vs_fp32_served (target >= 1.8)"
    if "openvino bf16" in by:
        ratios[key] = by["openvino bf16"] / by["openvino fp32"]
    else:
        ratios[key] = f"not measured: {skipped['openvino bf16']}"
    return {
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "openvino_capabilities": openvino.cpu_capabilities(),
            "openvino_precisions": list(precisions),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "served": served,
        "skipped": skipped,
        "in_process_openvino": in_process,
        "in_process_openvino_int8_best": best_int8,
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.openvino_serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fp32", type=Path, default=Path("artifacts/resnet50/model.onnx"))
    parser.add_argument("--int8", type=Path, default=Path("artifacts/resnet50/model.int8.onnx"))
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything; medians are reported")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16])
    parser.add_argument("--threads", type=int, default=0, help="threads per instance (0: cores / instances)")
    parser.add_argument(
        "--instances",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="instance counts each served candidate runs with (OpenVINO: streams); the best one counts",
    )
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--max-step", type=float, default=30.0, help="longest a served step measures (s)")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    for path in (args.fp32, args.int8):
        if not path.is_file():
            parser.error(f"no such model file: {path}")
    result = asyncio.run(_run(args))
    m = result["machine"]
    print(f"{m['cpu']}, {m['cores']} cores, OpenVINO precisions {m['openvino_precisions']}, "
          f"load {m['load_average_before'][0]:.1f} → {m['load_average_after'][0]:.1f}")  # fmt: skip
    for name, value in result["ratios"].items():
        print(f"  {name}: {value if isinstance(value, str) else f'{value:.2f}x'}")
    if args.out is not None:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
