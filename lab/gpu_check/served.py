"""Served throughput: the real gRPC server (`resnet-serve serve`, started by server.launch) under bench's
closed-loop load generator, from several client processes so the client's own Python is not what limits
the measurement."""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing as mp
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lab.gpu_check.backends import Candidate
from lab.gpu_check.model import Model
from lab.gpu_check.row import Row
from lab.gpu_check.settings import Settings, Skip, first_line, log
from resnet_serve.server.launch import free_port, serving  # standard library only: safe on a bare GPU node

if TYPE_CHECKING:
    from resnet_serve.bench.loadgen import Timing

TIMEOUT_S = 30.0  # per request


def jpeg_images(shape: tuple[int, ...], count: int = 32) -> list[bytes]:
    """Smooth synthetic pictures at the model's input size (the server resizes and crops them as its
    preprocessing says)."""
    from PIL import Image

    chans, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(count):
        planes = [np.sin(xx / (7 + i + c * 3)) * np.cos(yy / (5 + c + i % 5)) for c in range(max(chans, 1))]
        pixels = ((np.stack(planes, -1) + 1) * 127.5).astype(np.uint8)
        img = Image.fromarray(pixels[..., 0] if chans == 1 else pixels, "L" if chans == 1 else "RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG" if chans == 3 else "PNG", quality=90)
        out.append(buf.getvalue())
    return out


@contextlib.contextmanager
def server(
    model_name: str, path: Path, args: list[str], timeout_s: float, images: list[bytes], logs: Path
) -> Iterator[str]:
    port = free_port()
    log_path = logs / f"{model_name}.{args[1]}.server.log"
    with (
        log_path.open("w") as sink,
        serving(
            "--model", f"{model_name}={path}",
            "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "-1", "--http-port", "-1",
            "--max-batch-size", "128", "--max-queue-delay-ms", "2", "--log-level", "warning",
            *args,
            stdout=sink, stderr=subprocess.STDOUT,
        ) as proc,
    ):  # fmt: skip
        target = f"127.0.0.1:{port}"
        wait_ready(proc, target, images[0], timeout_s, log_path)
        yield target


def wait_ready(
    proc: subprocess.Popen[bytes], target: str, image: bytes, timeout_s: float, log_path: Path
) -> None:
    from resnet_serve.client.sync import Client

    with Client(target, timeout=10, retry=None) as client:
        end = time.perf_counter() + timeout_s
        while time.perf_counter() < end:
            if proc.poll() is not None:
                tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
                raise Skip(f"the server exited ({proc.returncode}): {tail[0][:200]}")
            try:
                client.classify(image)
                return
            except Exception:
                time.sleep(0.5)
    raise Skip(f"the server was not ready within {timeout_s:.0f} s (see {log_path})")


def timing(seconds: float) -> Timing:
    """A step takes `seconds`: a fifth warming up, then up to four windows, fewer once three agree (bench's
    stability rule)."""
    from resnet_serve.bench.loadgen import Timing

    fifth = seconds / 5
    return Timing(warmup_s=fifth, window_s=fifth, max_s=seconds - fifth, drain_s=5.0)


def _load_worker(target: str, images: list[bytes], concurrency: int, seconds: float, queue: Any) -> None:
    """One client process: a closed-loop step; puts (images/s, latencies, requests, errors) on `queue`."""
    from resnet_serve.bench.loadgen import Closed, run_step
    from resnet_serve.bench.senders import ImageSender
    from resnet_serve.client.aio import AsyncClient

    async def main() -> tuple[float, np.ndarray, int, int]:
        sender = ImageSender(AsyncClient(target, timeout=TIMEOUT_S, retry=None), images, timeout_s=TIMEOUT_S)
        try:
            step = await run_step(sender, Closed(concurrency), timing(seconds))
        finally:
            await sender.close()
        return step.throughput, step.latencies_s, step.requests, sum(step.errors.values())

    queue.put(asyncio.run(main()))


def served_load(target: str, images: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    """Closed-loop load: `concurrency` requests in flight, spread over up to 8 client processes."""
    from resnet_serve.bench.stats import LatencySummary

    procs = max(1, min(8, concurrency // 16))
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_load_worker, args=(target, images, n, seconds, queue)) for n in per]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    latencies = np.concatenate([lat for _, lat, _, _ in results])
    errors = sum(e for *_, e in results)
    if latencies.size == 0:
        raise Skip(f"no request succeeded at concurrency {concurrency} ({errors} errors)")
    summary = LatencySummary.of(latencies)
    return {
        "images_per_s": round(sum(rate for rate, *_ in results), 1),
        "p50_ms": round(summary["p50"], 3),
        "p99_ms": round(summary["p99"], 3),
        "requests": sum(n for _, _, n, _ in results),
        "errors": errors,
    }


def serve_row(cfg: Settings, model: Model, cand: Candidate, row: Row, work: Path) -> None:
    assert cand.server_args is not None
    path = model.checkpoint if cand.backend.startswith("torch") else model.onnx.get(cand.precision)
    if cand.backend == "tensorrt":
        path = work / f"{model.name}.{cand.precision}.plan"
    if path is None:
        return
    try:
        cfg.require_time(30 + len(cfg.served_concurrency) * cfg.served_seconds, "served")
        shape = model.inputs.shape[1:]
        images = jpeg_images(shape)
        log(f"{model.name}: {cand.backend} {cand.precision}: starting the server")
        with server(model.name, path, cand.server_args, 240, images, work) as target:
            for c in cfg.served_concurrency:
                log(f"{model.name}: {cand.backend} {cand.precision}: served load at concurrency {c}")
                row.served[str(c)] = served_load(target, images, c, cfg.served_seconds)
    except Skip as err:
        row.notes.append(f"served: {err}")
    except Exception as err:
        row.notes.append(f"served: failed: {first_line(err)}")
