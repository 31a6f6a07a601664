"""What `resnet-serve classify` does: send image files to a server and print their top-k labels."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from resnet_serve.client import output
from resnet_serve.client.aio import AsyncClient
from resnet_serve.client.channel import TLSConfig
from resnet_serve.client.output import Outcome
from resnet_serve.client.paths import Input
from resnet_serve.client.results import ClassifyError

PROGRESS_MIN_FILES = 20  # fewer files than this finish before a progress bar would tell anything


@dataclass(frozen=True)
class ClassifyOptions:
    """What `classify_all` sends where, and how it prints the results."""

    server: str
    model: str = ""  # "": the server's default model
    model_version: str = ""  # "": the latest ready version
    top_k: int = 5
    format: str = "human"  # one of output.FORMATS
    concurrency: int = 8
    timeout: float = 30.0  # seconds per image
    no_progress: bool = False
    tls: TLSConfig | None = None
    token: str | None = field(default=None, repr=False)  # bearer token for a server with --auth-token-file


async def classify_all(options: ClassifyOptions, inputs: list[Input]) -> int:
    """Classify ``inputs``, printing each outcome in input order and a summary on stderr; 0 when all
    succeeded, 1 when any failed. Raises ConnectionError when no server answers."""
    client = AsyncClient(
        options.server,
        model=options.model,
        version=options.model_version,
        timeout=options.timeout,
        tls=options.tls,
        token=options.token,
    )
    async with client:
        try:
            await client.wait_until_ready(timeout=min(options.timeout, 10.0), fail_fast=True)
        except ClassifyError as exc:
            raise ConnectionError(exc.message) from None
        start = time.perf_counter()
        outcomes = await _run_in_order(client, inputs, options)
        elapsed = time.perf_counter() - start
    print(summary(outcomes, elapsed), file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


async def _run_in_order(client: AsyncClient, inputs: list[Input], options: ClassifyOptions) -> list[Outcome]:
    """Classify with `concurrency` requests in flight, printing outcomes in input order as they complete."""
    from tqdm import tqdm

    show_bar = len(inputs) >= PROGRESS_MIN_FILES and not options.no_progress
    bar = tqdm(total=len(inputs), unit="img", file=sys.stderr, disable=None if show_bar else True)
    emit = _emitter(options.format, bar)
    done: list[Outcome | None] = [None] * len(inputs)
    next_to_print = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(inputs)):
        queue.put_nowait(i)

    async def worker() -> None:
        nonlocal next_to_print
        while not queue.empty():
            i = queue.get_nowait()
            done[i] = await _classify_one(client, inputs[i], options.top_k)
            bar.update(1)
            while next_to_print < len(done) and (ready := done[next_to_print]) is not None:
                emit(ready)
                next_to_print += 1

    if options.format == "csv":
        print(output.csv_header(), flush=True)
    try:
        await asyncio.gather(*(worker() for _ in range(min(options.concurrency, len(inputs)))))
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
