"""What a refused request costs the server: CPU per image-API request when the queue is full, under h2load.

    python -m lab.refusal_cost --rounds 2 --out artifacts/bench/refusal-cost.json

Goodput under overload (lab/goodput.py) is decided by what a refusal costs: at 10× overload nine requests of
ten are refused, on the core that also computes. This measures that cost directly. h2load (a C HTTP/2 client,
pinned to --client-cpus) sends one pre-encoded `Classify` (a 256×256 JPEG crop of sklearn's sample photos,
~28 KB) over and over to a server pinned to --server-cpus, whose model queues one request (`--max-batch-size
1 --max-queue-size 1`), so nearly every request is refused (UNAVAILABLE) and the rest are decoded and
computed. Side by side, in alternating rounds:
- bare: a `grpc.aio` server that parses each `ClassifyRequest` and answers UNAVAILABLE, nothing else (run by
  this module with `--bare-server PORT`): the floor of a refusal by a Python gRPC server;
- resnet-serve `--workers N`, for each N of --workers, serving lab/goodput.py's model (`--slow-layers`
  1024×1024 products per image: fewer makes a faster model, which admits more requests between refusals).
For each run: requests/s (h2load), the server's own statistics (successes and failures must add up to what
h2load sent), and CPU µs per request from /proc, by role: the worker processes (all their threads), the
engine process, and for one process every thread but its compute thread (the batcher's, which runs the model
with one intra-op thread: the busiest thread after the event loop's). A refusal's cost is the serving CPU per
request: with workers, the workers'.
Benchmarks print numbers; nothing asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.goodput import write_model
from lab.serving_floor import (
    READY_TIMEOUT_S,
    cpu_description,
    grpc_frame,
    model_counts,
    parse_h2load,
    preflight,
    process_tree_cpu,
)
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.server.launch import free_port, serve_command, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
MODEL = "goodput"
PATH = "/resnetserve.v1.ImageClassifier/Classify"
WORKER_MODULE = "resnet_serve.server.processes.worker"
QUEUE_FULL = "the queue is full (a refusal's floor)"


# ------------------------------------------------------------------------------------- the bare server


async def _bare_server(port: int) -> None:
    import grpc

    from resnet_serve.protos import classifier_pb2 as pb

    async def classify(request: pb.ClassifyRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, QUEUE_FULL)

    handler = grpc.method_handlers_generic_handler(
        "resnetserve.v1.ImageClassifier",
        {
            "Classify": grpc.unary_unary_rpc_method_handler(
                classify,
                request_deserializer=pb.ClassifyRequest.FromString,
                response_serializer=pb.ClassifyResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --------------------------------------------------------------------------------------- measuring


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of a process, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def serving_cpu(before: dict[int, float], after: dict[int, float], pid: int) -> float:
    """One process's CPU seconds between two `thread_cpu` readings, less its compute thread's: the busiest
    thread but the main one (the batcher's thread, which runs the model with one intra-op thread; the event
    loop's is the main thread, and gRPC's, the decoding pool's and the rest are serving work)."""
    spent = {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}
    others = [seconds for tid, seconds in spent.items() if tid != pid]
    return sum(spent.values()) - max(others, default=0.0)


def process_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of the "worker" processes under `pid`, of `pid` itself (the "engine"), and of all
    of them ("total")."""
    roles = {"worker": 0.0, "engine": 0.0, "total": 0.0}
    for child, (seconds, cmdline) in process_tree_cpu(pid).items():
        roles["total"] += seconds
        if WORKER_MODULE in cmdline:
            roles["worker"] += seconds
        elif child == pid:
            roles["engine"] += seconds
    return roles


def counts(port: int) -> tuple[int, int]:
    """(successes, failures) of the model, from the server's own KServe statistics."""
    import grpc

    from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return model_counts(pb_grpc.GRPCInferenceServiceStub(channel), MODEL)  # type: ignore[no-untyped-call]


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"refusal_cost: the bare server exited with code {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"refusal_cost: the bare server did not listen within {READY_TIMEOUT_S:.0f} s")


def start(
    name: str, model: Path, args: argparse.Namespace, folder: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """The server `name` pinned to --server-cpus, once it answers; its process and gRPC port."""
    port = free_port()
    log_path = folder / f"{name.replace(' ', '-')}.log"
    ready_file = log_path.with_suffix(".ready.json")
    if name == "bare":
        command = [sys.executable, "-m", "lab.refusal_cost", "--bare-server", str(port)]
    else:
        command = serve_command(
            "--model", f"{MODEL}={model}", "--host", "127.0.0.1", "--grpc-port", str(port),
            "--http-port", "-1", "--metrics-port", "-1", "--max-batch-size", "1", "--max-queue-size", "1",
            "--intra-op-threads", "1", "--workers", name.rsplit(" ", 1)[1], "--ready-file", str(ready_file),
        )  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["taskset", "-c", args.server_cpus, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        if name == "bare":
            wait_listening(port, process)
        else:
            wait_ready(process, ready_file, log=log_path)
    except BaseException:
        stop(process)
        raise
    return process, port


def h2load(port: int, data: Path, requests: int, args: argparse.Namespace) -> dict[str, float]:
    command = ["taskset", "-c", args.client_cpus, "h2load", "-n", str(requests), "-c", str(args.connections),
               "-m", str(args.streams), "-t", "1", "-d", str(data), "-H", "content-type: application/grpc",
               "-H", "te: trailers", f"http://127.0.0.1:{port}{PATH}"]  # fmt: skip
    return parse_h2load(subprocess.run(command, capture_output=True, text=True, check=False).stdout)


def measure(name: str, model: Path, data: Path, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    process, port = start(name, model, args, folder)
    try:
        h2load(port, data, args.warmup_requests, args)
        ours = name != "bare"
        one_process = name.endswith(" 1")
        before = counts(port) if ours else (0, 0)
        threads0, cpu0 = thread_cpu(process.pid), process_cpu(process.pid)
        run = h2load(port, data, args.requests, args)
        threads1, cpu1 = thread_cpu(process.pid), process_cpu(process.pid)
        after = counts(port) if ours else (0, 0)
    finally:
        stop(process)
    done = max(int(run["done"]), 1)
    row: dict[str, Any] = {
        "server": name,
        "requests": int(run["done"]),
        "requests_per_s": run["requests_per_s"],
        "cpu_us_per_request": (cpu1["total"] - cpu0["total"]) / done * 1e6,
    }
    if ours:
        row["served"] = after[0] - before[0]
        row["refused"] = after[1] - before[1]
        row["counted"] = row["served"] + row["refused"] == int(run["done"])
        for role in ("worker", "engine"):
            row[f"{role}_cpu_us_per_request"] = (cpu1[role] - cpu0[role]) / done * 1e6
        row["serving_cpu_us_per_request"] = (
            serving_cpu(threads0, threads1, process.pid) / done * 1e6
            if one_process
            else row["worker_cpu_us_per_request"]
        )
    else:
        row["serving_cpu_us_per_request"] = row["cpu_us_per_request"]
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    floor = statistics.median(r["serving_cpu_us_per_request"] for r in rows if r["server"] == "bare")
    for name in dict.fromkeys(r["server"] for r in rows):
        mine = [r for r in rows if r["server"] == name]
        serving = statistics.median(r["serving_cpu_us_per_request"] for r in mine)
        entry: dict[str, Any] = {
            "server": name,
            "serving_cpu_us_per_request": serving,
            "over_bare": serving / floor,
            "requests_per_s": statistics.median(r["requests_per_s"] for r in mine),
        }
        if name != "bare":
            entry["served_fraction"] = sum(r["served"] for r in mine) / max(
                sum(r["requests"] for r in mine), 1
            )
        out.append(entry)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from resnet_serve.bench.workload import photo_crops
    from resnet_serve.protos import classifier_pb2 as pb

    names = ["bare", *(f"resnet-serve --workers {n}" for n in args.workers)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = write_model(folder / "model.onnx", args.slow_layers)
        data = folder / "classify.bin"
        image = photo_crops(1)[0]
        data.write_bytes(grpc_frame(pb.ClassifyRequest(model=MODEL, image=image).SerializeToString()))
        for round_ in range(args.rounds):
            for name in names:
                row = measure(name, model, data, args, folder) | {"round": round_ + 1}
                rows.append(row)
                extra = (
                    f", served {row['served']}, refused {row['refused']}, workers "
                    f"{row['worker_cpu_us_per_request']:.0f} µs, "
                    f"engine {row['engine_cpu_us_per_request']:.0f} µs"
                    if "served" in row
                    else ""
                )
                print(
                    f"round {round_ + 1} {name}: {row['requests_per_s']:.0f} req/s, serving CPU "
                    f"{row['serving_cpu_us_per_request']:.0f} µs per request{extra}",
                    flush=True,
                )
    return {
        "cpu": cpu_description(),
        "image_bytes": len(image),
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "rounds": rows,
        "summary": summarise(rows),
        "consistent": all(r.get("counted", True) for r in rows),
    }


def worker_counts(text: str) -> list[int]:
    """--workers: "1,2" → [1, 2]."""
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        message = f"expected numbers separated by commas, like 1,2; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.refusal_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every server")
    parser.add_argument("--requests", type=int, default=20000, help="h2load requests per run")
    parser.add_argument("--warmup-requests", type=int, default=2000)
    parser.add_argument("--workers", type=worker_counts, default=[1, 2],
                        help="resnet-serve --workers values, comma-separated (default 1,2)")  # fmt: skip
    parser.add_argument(
        "--slow-layers", type=int, default=200, help="the model's 1024×1024 products per image"
    )
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16, help="h2load streams per connection")
    parser.add_argument("--server-cpus", default="0", help="taskset list for the server (default 0)")
    parser.add_argument("--client-cpus", default="1", help="taskset list for h2load (default 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server is not None:
        asyncio.run(_bare_server(args.bare_server))
        return 0
    if (
        min(args.rounds, args.requests, args.warmup_requests, args.connections, args.streams) < 1
        or min(args.workers) < 1
    ):
        parser.error("--rounds, --requests, --warmup-requests, --connections, --streams, --workers: each ≥ 1")
    if not preflight(parser, args):
        return 2
    result = run(args)
    print("median serving CPU per request (a refusal's cost; with workers, the workers'):")
    for entry in result["summary"]:
        served = f", {entry['served_fraction']:.1%} served" if "served_fraction" in entry else ""
        print(f"  {entry['server']}: {entry['serving_cpu_us_per_request']:.0f} µs = "
              f"{entry['over_bare']:.2f}× bare{served}")  # fmt: skip
    if args.out is not None:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0 if result["consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())
