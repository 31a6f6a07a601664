"""`resnet-serve classify`: send image files to a server and print their top-k labels."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc

from resnet_serve.cli.options import add_connection_arguments, positive_float, positive_int, tls_from_args
from resnet_serve.client import output
from resnet_serve.client.aio import AsyncClient
from resnet_serve.client.output import Outcome
from resnet_serve.client.paths import Input, expand
from resnet_serve.client.results import ClassifyError

PROGRESS_MIN_FILES = 20  # fewer files than this finish before a progress bar would tell anything

EXAMPLES = """examples:
  resnet-serve classify cat.jpg dog.png
  resnet-serve classify --top-k 3 photos/                 # every image under photos/, recursively
  resnet-serve classify 'scans/**/*.png' --format json > results.jsonl
  resnet-serve classify --server gpu-box:8001 --model resnet50 --concurrency 16 --format csv images/

The summary (count, errors, latency percentiles) goes to stderr; the exit status is 1 if any image failed
(after all the others were classified), 2 for bad options."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Classify image files with a running resnet-serve server."
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    parser.add_argument("--model", default="", help="model name (default: the server's default model)")
    parser.add_argument(
        "--model-version", default="", metavar="VERSION", help="model version (default: the latest ready)"
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=5, metavar="K", help="labels per image (default: 5)"
    )
    parser.add_argument(
        "--format",
        choices=output.FORMATS,
        default="human",
        help="stdout: human lines, JSON lines or CSV (default: human)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=8,
        metavar="N",
        help="requests in flight at once (default: 8)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="deadline per image in seconds (default: 30)",
    )
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    inputs = expand(args.paths)
    try:
        return asyncio.run(_classify_all(args, inputs))
    except (OSError, ValueError) as exc:  # e.g. an unreadable certificate file
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _classify_all(args: argparse.Namespace, inputs: list[Input]) -> int:
    client = AsyncClient(
        args.server,
        model=args.model,
        version=args.model_version,
        timeout=args.timeout,
        tls=tls_from_args(args),
    )
    async with client:
        try:
            await client.wait_until_ready(timeout=min(args.timeout, 10.0))
        except ClassifyError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        start = time.perf_counter()
        outcomes = await _run_in_order(client, inputs, args)
        elapsed = time.perf_counter() - start
    print(summary(outcomes, elapsed), file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


async def _run_in_order(client: AsyncClient, inputs: list[Input], args: argparse.Namespace) -> list[Outcome]:
    """Classify with `concurrency` requests in flight, printing outcomes in input order as they complete."""
    from tqdm import tqdm

    show_bar = len(inputs) >= PROGRESS_MIN_FILES and not args.no_progress
    bar = tqdm(total=len(inputs), unit="img", file=sys.stderr, disable=None if show_bar else True)
    emit = _emitter(args.format, bar)
    done: list[Outcome | None] = [None] * len(inputs)
    next_to_print = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(inputs)):
        queue.put_nowait(i)

    async def worker() -> None:
        nonlocal next_to_print
        while not queue.empty():
            i = queue.get_nowait()
            done[i] = await _classify_one(client, inputs[i], args.top_k)
            bar.update(1)
            while next_to_print < len(done) and (ready := done[next_to_print]) is not None:
                emit(ready)
                next_to_print += 1

    if args.format == "csv":
        print(output.csv_header(), flush=True)
    try:
        await asyncio.gather(*(worker() for _ in range(min(args.concurrency, len(inputs)))))
    finally:
        bar.close()
    return [o for o in done if o is not None]


async def _classify_one(client: AsyncClient, item: Input, top_k: int) -> Outcome:
    if item.problem:
        return Outcome(item.name, code=grpc.StatusCode.NOT_FOUND.name, message=item.problem)
    try:
        data = Path(item.name).read_bytes()
    except FileNotFoundError:
        return Outcome(item.name, code=grpc.StatusCode.NOT_FOUND.name, message="no such file")
    except PermissionError:
        return Outcome(item.name, code=grpc.StatusCode.PERMISSION_DENIED.name, message="permission denied")
    except OSError as exc:
        return Outcome(
            item.name, code=grpc.StatusCode.INVALID_ARGUMENT.name, message=exc.strerror or str(exc)
        )
    try:
        return Outcome(item.name, result=await client.classify(data, top_k=top_k))
    except ClassifyError as exc:
        return Outcome(item.name, code=exc.code.name, message=exc.message)


def _emitter(fmt: str, bar: object) -> Callable[[Outcome], None]:
    from tqdm import tqdm

    def write(line: str, err: bool = False) -> None:
        # tqdm.write keeps the bar intact when it shares the terminal with our output.
        tqdm.write(line, file=sys.stderr if err else sys.stdout)
        (sys.stderr if err else sys.stdout).flush()

    def emit(outcome: Outcome) -> None:
        if fmt == "json":
            write(output.json_line(outcome))
        elif fmt == "csv":
            write(output.csv_rows(outcome))
        else:
            write(output.human(outcome), err=not outcome.ok)

    return emit


def summary(outcomes: list[Outcome], elapsed_s: float) -> str:
    """One or two lines: how many succeeded, why the others failed, and the client-side latency."""
    import numpy as np

    ok = [o.result.latency_s for o in outcomes if o.result is not None]
    failed = Counter(o.code for o in outcomes if not o.ok)
    rate = len(outcomes) / elapsed_s if elapsed_s > 0 else 0.0
    n_failed = sum(failed.values())
    line = f"{len(outcomes)} images in {elapsed_s:.2f} s ({rate:.1f}/s): {len(ok)} ok, {n_failed} failed"
    if failed:
        line += " (" + ", ".join(f"{code} {n}" for code, n in failed.most_common()) + ")"
    if ok:
        p50, p90, p99 = np.percentile(np.array(ok) * 1e3, [50, 90, 99])
        line += f"\nlatency ms: p50 {p50:.2f}  p90 {p90:.2f}  p99 {p99:.2f}  max {max(ok) * 1e3:.2f}"
    return line
