"""Soak: the image API for minutes at ~70 % of its capacity, good and malformed images mixed. Does anything
leak or drift?

The server (pinned to core 0 as in lab/goodput.py) first gets a closed-loop sweep for its capacity C (or
`--rate` is given); then an open loop sends `--load` × C requests/s for `--minutes`, a `--bad` share of them
malformed (truncated, corrupt, empty, not an image, a PNG header claiming 100000×100000 pixels). Every
`--interval` seconds it samples the server's RSS (/proc) and the p99 of the good requests answered in that
interval. Reported, printed and written as JSON (issue #15's acceptance: RSS after warm-up grows ≤ 50 MB,
p99 drifts ≤ 10 %, 0 INTERNAL, 0 lost):

* `rss_growth_mb`: RSS at the end minus RSS when the warm-up (`--warmup-minutes`) ended;
* `p99_drift`: the p99 of the last quarter of the run after warm-up ÷ that of the first quarter, minus 1;
* `internal`: answers with INTERNAL or UNKNOWN; `unexpected`: a good image not answered OK, a malformed
  one not answered INVALID_ARGUMENT, a damaged one neither (UNAVAILABLE and DEADLINE_EXCEEDED are load);
* `lost`: requests without any answer when the run ended (after a 30 s drain).

    python -m lab.soak --minutes 10 --out artifacts/bench/soak.json

Not run in CI (it takes as long as you ask).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from lab.goodput import (
    MODEL,
    capacity,
    cpu_seconds,
    pin_client,
    pinned_server,
    sender_for,
    write,
    write_model,
)
from lab.serving_floor import process_tree_cpu
from resnet_serve.bench.loadgen import Timing
from resnet_serve.bench.workload import load_images
from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc

# What each kind of image may be answered; UNAVAILABLE (queue full) and DEADLINE_EXCEEDED are load, not bugs.
_LOAD = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
EXPECTED = {
    "good": ("OK", *_LOAD),
    "malformed": ("INVALID_ARGUMENT", *_LOAD),
    "damaged": ("OK", "INVALID_ARGUMENT", *_LOAD),
}


def rss_mb(pid: int) -> float:
    """The resident memory of the server and every process under it (`serve --workers N`: the engine and
    its workers; until 2026-12-07 the engine's alone)."""
    total = 0
    for member in process_tree_cpu(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:  # gone meanwhile
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)
    return total / 1024


def malformed(good: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Images a careless or hostile client sends: (those that must be answered INVALID_ARGUMENT: empty, not an
    image, a PNG claiming 100000×100000 pixels, random bytes, truncated files; damaged ones, with bytes
    overwritten, which may still decode (JPEG is resilient) and must be answered OK or INVALID_ARGUMENT)."""
    rng = random.Random(0)
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, "PNG")
    head = png.getvalue()
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    huge = head[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    bad = [b"", b"not an image at all", huge + head[33:], bytes(rng.randrange(256) for _ in range(4096))]
    damaged = []
    for data in good[:8]:
        bad.append(data[: len(data) // 3])
        corrupt = bytearray(data)
        for _ in range(64):
            corrupt[rng.randrange(16, len(corrupt))] = rng.randrange(256)
        damaged.append(bytes(corrupt))
    return bad, damaged


@dataclass
class Interval:
    start: float
    rss_mb: float = 0.0
    good_latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)


async def soak(args: argparse.Namespace, target: str, pid: int, rate: float) -> dict[str, Any]:
    _, good = load_images(args.images, channels=3)
    bad, damaged = malformed(good)
    rng = random.Random(1)
    intervals: list[Interval] = []
    pending: set[asyncio.Task[None]] = set()
    sent = 0
    unexpected: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]

        async def one(image: bytes, kind: str, scheduled: float) -> None:
            try:
                await stub.Classify(
                    pb.ClassifyRequest(model=MODEL, image=image, top_k=1), timeout=args.timeout
                )
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            interval = intervals[-1]
            interval.codes[code] += 1
            if kind == "good" and code == "OK":
                interval.good_latencies.append(time.perf_counter() - scheduled)
            if code not in EXPECTED[kind]:
                unexpected[f"{kind}: {code}"] += 1

        start = time.perf_counter()
        end = start + args.minutes * 60
        next_sample = start
        gap = 1.0 / rate
        when = start
        while when < end:
            now = time.perf_counter()
            if now >= next_sample:
                intervals.append(Interval(now - start, rss_mb(pid)))
                next_sample += args.interval
                print(
                    f"  t={now - start:6.0f} s  rss {intervals[-1].rss_mb:7.1f} MB  sent {sent}  "
                    f"in flight {len(pending)}",
                    flush=True,
                )
            if when > now:
                await asyncio.sleep(when - now)
            if rng.random() >= args.bad:
                kind, image = "good", rng.choice(good)
            else:
                kind = rng.choice(["malformed", "malformed", "damaged"])
                image = rng.choice(bad if kind == "malformed" else damaged)
            task = asyncio.create_task(one(image, kind, when))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            when += rng.expovariate(1.0) * gap  # Poisson arrivals
        _, lost = await asyncio.wait(pending, timeout=30) if pending else (set(), set())
        for task in lost:
            task.cancel()
        intervals.append(Interval(time.perf_counter() - start, rss_mb(pid)))
    return summarise(args, intervals, sent, len(lost), unexpected, rate)


def summarise(
    args: argparse.Namespace,
    intervals: list[Interval],
    sent: int,
    lost: int,
    unexpected: Counter[str],
    rate: float,
) -> dict[str, Any]:
    warm = [i for i in intervals if i.start >= args.warmup_minutes * 60] or intervals[-2:]
    quarter = max(1, len(warm) // 4)

    def p99(chunk: list[Interval]) -> float:
        values = [v for i in chunk for v in i.good_latencies]
        return float(np.percentile(values, 99) * 1e3) if values else 0.0

    first, last = p99(warm[:quarter]), p99(warm[-quarter - 1 : -1] or warm[-quarter:])
    codes: Counter[str] = Counter()
    for interval in intervals:
        codes.update(interval.codes)
    return {
        "rate": round(rate, 1),
        "sent": sent,
        "codes": dict(codes),
        "rss_after_warmup_mb": round(warm[0].rss_mb, 1),
        "rss_end_mb": round(intervals[-1].rss_mb, 1),
        "rss_growth_mb": round(intervals[-1].rss_mb - warm[0].rss_mb, 1),
        "p99_first_quarter_ms": round(first, 2),
        "p99_last_quarter_ms": round(last, 2),
        "p99_drift": round(last / first - 1, 3) if first else None,
        "internal": codes["INTERNAL"] + codes["UNKNOWN"],
        "unexpected": dict(unexpected),
        "lost": lost,
        "samples": [
            {"t_s": round(i.start, 1), "rss_mb": round(i.rss_mb, 1), "p99_ms": round(p99([i]), 2), **i.codes}
            for i in intervals
        ],
    }


async def measure(args: argparse.Namespace, target: str, pid: int) -> dict[str, Any]:
    rate = args.rate
    best = None
    if rate is None:
        sender = await sender_for(target, args.images)
        try:
            best, _, _ = await capacity(
                sender, pid, [1, 2, 4, 8], Timing(warmup_s=1.0, window_s=2.0, max_s=8.0)
            )
        finally:
            await sender.close()
        rate = args.load * best
    print(f"soak at {rate:.1f} requests/s ({args.bad:.0%} malformed) for {args.minutes:g} min:", flush=True)
    cpu_start = cpu_seconds(pid)
    result = await soak(args, target, pid, rate)
    result["capacity"] = best
    result["server_cpu_s"] = round(cpu_seconds(pid) - cpu_start, 1)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lab.soak",
        description="Minutes at ~70 %% of capacity, malformed images mixed in: RSS, p99, INTERNAL, lost.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, help="ONNX model with resnet-serve metadata (default: generated)"
    )
    parser.add_argument("--slow-layers", type=int, default=200, help="generated model: 1024×1024 products")
    parser.add_argument("--images", default="photos", help="digits, photos, a folder or a glob")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=1.0, help="RSS and p99 are compared after it")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--load", type=float, default=0.7, help="share of the measured capacity to offer")
    parser.add_argument("--rate", type=float, help="requests/s to offer (skips the capacity sweep)")
    parser.add_argument("--bad", type=float, default=0.2, help="share of malformed images")
    parser.add_argument("--timeout", type=float, default=10.0, help="each request's deadline (s)")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `serve` argument (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/soak.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server_args = [
        "--intra-op-threads",
        "1",
        "--preprocess-threads",
        "1",
        "--max-batch-size",
        "1",
        *args.server_arg,
    ]
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        model = args.model or write_model(Path(tmp) / "model.onnx", args.slow_layers)
        with pinned_server(model, server_args, Path(tmp) / "server.log") as server:
            pin_client()
            result = asyncio.run(measure(args, server.target, server.pid))
    result["config"] = {
        "command": " ".join(["python -m lab.soak", *(argv if argv is not None else sys.argv[1:])]),
        "server_args": server_args,
        "load_average": os.getloadavg(),
    }
    print(
        f"RSS growth after warm-up {result['rss_growth_mb']} MB (target <= 50), p99 drift "
        f"{result['p99_drift']} (target <= 0.10), INTERNAL {result['internal']}, lost {result['lost']}, "
        f"unexpected {result['unexpected']}, answers {result['codes']}"
    )
    return write(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
