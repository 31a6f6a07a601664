"""Train, export, serve and classify scikit-learn's digits end to end (what `make demo` runs).

Each stage runs as the same `resnet-serve` subcommand a user would type, so the demo exercises the real
product: train (or reuse the checkpoint), export to ONNX, start the server, classify every held-out digit
through gRPC, report accuracy and latency, then stop the server with SIGTERM.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from resnet_serve.cli.options import positive_int
from resnet_serve.client import ClassifyError, Client
from resnet_serve.client.results import Classification
from resnet_serve.server.launch import free_port, serve_command, stop

DEMO_EPOCHS = 12  # enough for >= 98 % held-out accuracy on 2 cores in about a minute


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("artifacts/digits"),
        help="where the checkpoint, ONNX model and held-out images go",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=DEMO_EPOCHS,
        help="training epochs when no checkpoint exists yet (the train command's default "
        "trains longer, for >= 99 %%)",
    )
    parser.add_argument("--retrain", action="store_true", help="train even if a checkpoint exists")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at once")


def _say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


def _stage(*argv: str) -> None:
    cmd = [sys.executable, "-m", "resnet_serve", *argv]
    print("   $ resnet-serve " + " ".join(argv), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"demo: `resnet-serve {argv[0]}` failed with exit code {done.returncode}")


def _holdout_pngs(directory: Path) -> list[tuple[Path, int]]:
    from resnet_serve.training.data import digits_holdout

    images, labels = digits_holdout()
    files: list[tuple[Path, int]] = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = directory / str(label) / f"{i:04d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path.with_suffix(".tmp.png"))
            os.replace(path.with_suffix(".tmp.png"), path)
        files.append((path, label))
    return files


def _checkpoint_accuracy(checkpoint: Path) -> float | None:
    log = checkpoint.with_suffix(".log.jsonl")  # written beside the checkpoint by `resnet-serve train`
    if not log.exists():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    epochs = [r for r in records if "test_acc" in r]
    return float(epochs[-1]["test_acc"]) if epochs else None


def _wait_ready(client: Client, server: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(client.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"demo: the server exited early with code {server.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit("demo: the server did not become ready within 60 s")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    workdir: Path = args.workdir
    checkpoint, onnx_path = workdir / "model.pt", workdir / "model.onnx"

    if checkpoint.exists() and not args.retrain:
        _say(f"1/5 reusing the trained checkpoint {checkpoint} (--retrain to train again)")
    else:
        _say(f"1/5 training resnet20 on scikit-learn's digits ({args.epochs} epochs)")
        _stage("train", "--out", str(checkpoint), "--epochs", str(args.epochs))
    trained_acc = _checkpoint_accuracy(checkpoint)

    if onnx_path.exists() and onnx_path.stat().st_mtime >= checkpoint.stat().st_mtime:
        _say(f"2/5 reusing the exported model {onnx_path}")
    else:
        _say("2/5 folding BatchNorm and exporting to ONNX (checked against PyTorch)")
        _stage("export", "--checkpoint", str(checkpoint), "--out", str(onnx_path))

    files = _holdout_pngs(workdir / "heldout")
    grpc_port, metrics_port = free_port(), free_port()
    _say(f"3/5 starting the server on 127.0.0.1:{grpc_port} (metrics on :{metrics_port})")
    command = serve_command(
        "--model", f"digits={onnx_path}", "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port), "--max-queue-delay-ms", "2", "--http-port", "-1",
    )  # fmt: skip
    server = subprocess.Popen(command)
    try:
        with Client(f"127.0.0.1:{grpc_port}", timeout=30.0) as client:
            _wait_ready(client, server)
            _say(f"4/5 classifying {len(files)} held-out digit images (PNG files) through gRPC")
            results = _classify(client, files, args.concurrency)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        served = _metric_lines(metrics_url)
    finally:
        _say("5/5 stopping the server (SIGTERM: drain, then exit)")
        code = stop(server, timeout_s=30)
    _report(results, files, trained_acc, metrics_url, served, code, time.monotonic() - started)
    return 0 if code == 0 and all(not isinstance(r, ClassifyError) for r, _ in results) else 1


def _classify(
    client: Client, files: list[tuple[Path, int]], concurrency: int
) -> list[tuple[Classification | ClassifyError, float]]:
    def one(path: Path) -> tuple[Classification | ClassifyError, float]:
        start = time.perf_counter()
        try:
            result: Classification | ClassifyError = client.classify(path, top_k=3)
        except ClassifyError as exc:
            result = exc
        return result, time.perf_counter() - start

    with cf.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, [p for p, _ in files]))


def _metric_lines(url: str) -> list[str]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text: str = reply.read().decode()
    wanted = ("resnet_serve_requests_total", "resnet_serve_inferences_total", "resnet_serve_executions_total")
    return [line for line in text.splitlines() if line.startswith(wanted) and not line.endswith(" 0.0")]


def _report(
    results: list[tuple[Classification | ClassifyError, float]],
    files: list[tuple[Path, int]],
    trained_acc: float | None,
    metrics_url: str,
    served: list[str],
    exit_code: int,
    elapsed_s: float,
) -> None:
    ok = [
        (r, lat, label)
        for (r, lat), (_, label) in zip(results, files, strict=True)
        if not isinstance(r, ClassifyError)
    ]
    errors = len(results) - len(ok)
    correct = sum(int(r.top.label) == label for r, _, label in ok)
    acc = correct / len(files)
    latencies = np.array([lat for _, lat, _ in ok]) * 1e3
    print()
    print("Predictions (first five held-out images):")
    for (r, _, label), (path, _) in list(zip(ok, files, strict=False))[:5]:
        top = ", ".join(f"{p.label} {p.score:.3f}" for p in r.predictions)
        print(
            f"  {path.name}: true {label} -> {top}   "
            f"(model {r.model} v{r.version}, batch {r.timing.batch_size})"
        )
    print()
    trained = f"{100 * trained_acc:.2f} %" if trained_acc is not None else "unknown"
    print(f"Accuracy through the server : {100 * acc:.2f} %  ({correct}/{len(files)}, {errors} errors)")
    print(f"Accuracy at training time   : {trained}  (same held-out split, PyTorch)")
    if len(latencies):
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        queue = np.mean([r.timing.queue_us for r, _, _ in ok]) / 1e3
        compute = np.mean([r.timing.compute_us for r, _, _ in ok]) / 1e3
        batch = np.mean([r.timing.batch_size for r, _, _ in ok])
        print(f"Client latency              : p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms")
        print(
            f"Server split (mean)         : queue {queue:.2f} ms, compute {compute:.2f} ms, "
            f"batch size {batch:.1f}"
        )
    print(f"Metrics were at             : {metrics_url}")
    for line in served:
        print(f"    {line}")
    print(f"Server exit code            : {exit_code}")
    print(f"Demo took {elapsed_s:.0f} s")
