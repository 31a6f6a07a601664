"""`resnet-serve bench`: latency and throughput of a running server, perf_analyzer style.

Closed loop sweeps a list of concurrencies; open loop offers Poisson traffic at fixed rates (the MLPerf
"Server" scenario) and times each request from its scheduled send time. Every step warms up, then measures
in windows until three agree within the stability tolerance. Results go to a table, bench.json, bench.csv
and two PNG plots in --out.
"""

from __future__ import annotations

import asyncio
import datetime
import platform
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_serve.client.channel import TLSConfig


@dataclass(frozen=True)
class BenchOptions:
    """What one `resnet-serve bench` run measures and how (the flags, docs/benchmarking.md)."""

    server: str
    tls: TLSConfig | None = None
    token: str | None = field(default=None, repr=False)  # image API bearer token (--token-file)
    protocol: str = "image"  # "image": our ImageClassifier API; "kserve": KServe v2 tensors
    transport: str = "grpc"  # KServe v2 over "grpc" or "http" (perf_analyzer's -i)
    model: str = ""  # "" = the server's default model
    images: str = "auto"
    batch_size: int = 1
    open_loop: bool = False  # levels are Poisson rates (requests/s), else concurrencies
    slo_p99_ms: float | None = None
    slo_iterations: int = 4
    warmup: float = 2.0
    window: float = 2.0
    max_step_time: float = 30.0
    stability: float = 0.10
    timeout: float = 10.0
    seed: int = 0
    baseline: Path | None = None
    baseline_time: float = 2.0
    baseline_device: str = "cpu"
    baseline_threads: int = 0
    out: Path = Path("artifacts/bench")
    csv: Path | None = None  # also the CSV here (perf_analyzer's -f)
    title: str = ""


async def bench(options: BenchOptions, levels: list[Any]) -> int:
    """Run the sweep over ``levels`` (concurrencies or rates) and write the report; 0 when every request
    of the measured windows succeeded. Raises Failure when any failed (after writing everything) or when the
    server went away mid-sweep (every request UNAVAILABLE for Timing.gone_s: the sweep stops there),
    ConnectionError when the server does not answer at the start, WorkloadError for unusable images; on
    Ctrl-C, writes the steps already measured (marked interrupted) and re-raises the cancellation."""
    from tqdm import tqdm

    from resnet_serve.bench import baseline, plots, report, slo
    from resnet_serve.bench.loadgen import Closed, Open, StepResult, Timing, run_step
    from resnet_serve.formats.errors import Failure, UserError

    if not levels:  # the parsers never return none; a caller of this function might
        raise UserError("nothing to measure: give at least one concurrency or rate")
    sender, workload, model = await make_sender(options)
    timing = Timing(
        options.warmup,
        options.window,
        options.max_step_time,
        options.stability,
        drain_s=min(options.timeout, 5.0),
    )
    loads: list[Closed | Open] = (
        [Open(float(r), options.seed) for r in levels]
        if options.open_loop
        else [Closed(int(c)) for c in levels]
    )
    steps: list[StepResult] = []
    stopped: str | None = None  # why the sweep ended early: "interrupted", "server gone"
    slo_doc = None
    progress = tqdm(total=len(loads), unit="step", file=sys.stderr, disable=None, leave=False)
    try:
        for load in loads:
            progress.set_description(load.label)
            step = await run_step(sender, load, timing)
            steps.append(step)
            progress.update(1)
            tqdm.write(_step_line(step), file=sys.stderr)
            if step.gone:
                raise _ServerGone
        if options.slo_p99_ms is not None:
            if options.open_loop:

                async def at(rate: float) -> StepResult:
                    step = await run_step(sender, Open(rate, options.seed), timing)
                    tqdm.write(_step_line(step, "slo-search"), file=sys.stderr)
                    if step.gone:
                        steps.append(step)
                        raise _ServerGone
                    return step

                steps += await slo.bisect_rate(at, list(steps), options.slo_p99_ms, options.slo_iterations)
            slo_doc = slo.best(steps, options.slo_p99_ms, "bisection" if options.open_loop else "sweep")
    except _ServerGone:
        stopped = "server gone"
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task, then raises KeyboardInterrupt
        stopped = "interrupted"
    finally:
        progress.close()
        await sender.close()

    base_results: list[baseline.BaselineResult] = []
    if options.baseline is not None and stopped is None:
        sizes = {sender.batch_size} | {round(s.server["batch_size"]) for s in steps if s.server}
        base_results = await asyncio.to_thread(
            baseline.measure,
            options.baseline,
            sorted(max(1, n) for n in sizes),
            options.baseline_time,
            options.baseline_device,
            options.baseline_threads,
        )

    config = {
        "server": options.server,
        "protocol": options.protocol,
        "transport": options.transport,
        "model": model,
        "batch_size": sender.batch_size,
        "workload": workload,
        "mode": "open" if options.open_loop else "closed",
        "levels": levels,
        "warmup_s": options.warmup,
        "window_s": options.window,
        "max_step_s": options.max_step_time,
        "stability": options.stability,
        "timeout_s": options.timeout,
        "seed": options.seed,
        "baseline_model": str(options.baseline) if options.baseline else None,
        "baseline_threads": options.baseline_threads,
        "command": "resnet-serve bench "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }
    ended = None if stopped is None else {"reason": stopped, "steps": len(steps), "levels": len(loads)}
    doc = report.document(config, _environment(), steps, base_results, slo_doc, ended)
    written = report.write(doc, options.out)
    if options.csv is not None:
        written.append(report.write_csv(doc, options.csv))
    print(report.table(doc))
    if stopped is not None or not any(s.requests for s in steps):  # nothing (whole) to plot: say why
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
        if stopped == "interrupted":
            raise asyncio.CancelledError  # asyncio.run makes it the KeyboardInterrupt it was (exit 130)
        see = f"see {options.out / 'bench.json'}"
        gone = ""
        if stopped == "server gone":
            last = steps[-1]
            gone = (
                f"the server stopped answering at {last.load.label}: every request failed UNAVAILABLE for "
                f"{last.gone_s:.1f} s, so the sweep stopped there ({len(steps)} steps measured, {len(loads)} "
                "planned); "
            )
        if not any(s.requests for s in steps):
            failures = _failures(steps) or "no answer at all"
            raise Failure(f"no request completed at any load level ({failures}); {gone}{see}")
        raise Failure(gone + see)
    title = options.title or f"{model or 'default model'} via {options.protocol} API at {options.server}"
    written.append(plots.latency_throughput(doc, options.out / "latency_throughput.png", title))
    written.append(plots.latency_cdf(steps, options.out / "latency_cdf.png", title))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    failed = sum(sum(s.errors.values()) for s in steps)
    if failed:
        total = failed + sum(s.requests for s in steps)
        where = ", ".join(s.load.label for s in steps if s.errors)
        raise Failure(
            f"{failed} of {total} requests measured failed ({_failures(steps)}) at {where}; the latencies "
            f"and throughput count the successful ones only; see {options.out / 'bench.json'}"
        )
    return 0


class _ServerGone(Exception):
    """A step ended because every request failed UNAVAILABLE for Timing.gone_s: the sweep stops."""


def _failures(steps: list[Any]) -> str:
    """The failed requests of `steps` by status, e.g. "INVALID_ARGUMENT 330, UNAVAILABLE 2"."""
    errors: dict[str, int] = {}
    for s in steps:
        for name, count in s.errors.items():
            errors[name] = errors.get(name, 0) + count
    return ", ".join(f"{name} {count}" for name, count in sorted(errors.items()))


async def make_sender(options: BenchOptions) -> tuple[Any, str, str]:
    """The sender for --protocol, its workload's description and the model name."""
    from resnet_serve.bench.senders import ImageSender, kserve_sender
    from resnet_serve.bench.workload import load_images
    from resnet_serve.client.aio import AsyncClient
    from resnet_serve.client.results import ClassifyError

    if options.protocol == "kserve":
        sender = await kserve_sender(
            options.server, options.model, options.tls, options.batch_size, options.timeout, options.transport
        )
        return sender, sender.description, sender.model_name
    # No retries: a benchmark must see every UNAVAILABLE, not hide it behind backoff.
    client = AsyncClient(
        options.server,
        model=options.model,
        timeout=options.timeout,
        retry=None,
        tls=options.tls,
        token=options.token,
    )
    try:
        await client.wait_until_ready(timeout=min(options.timeout, 10.0), fail_fast=True)
        models = await client.list_models()
    except ClassifyError as exc:
        await client.close()
        raise ConnectionError(exc.message) from None
    chosen = next(
        (m for m in models if m.name == options.model or (not options.model and m.is_default)), None
    )
    if options.model and chosen is None:
        await client.close()
        raise ConnectionError(
            f"the server has no model {options.model!r} ({', '.join(m.name for m in models)})"
        )
    channels = chosen.input_shape[0] if chosen and chosen.input_shape else None
    description, images = load_images(options.images, channels)
    name = chosen.name if chosen else options.model
    return ImageSender(client, images, options.batch_size, options.timeout, description), description, name


def _step_line(step: Any, phase: str = "") -> str:
    lat = step.latency
    line = (
        f"{'(' + phase + ') ' if phase else ''}{step.load.label}: {step.throughput:.1f} infer/s, "
        f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms"
    )
    if step.errors:
        line += ", errors " + ", ".join(f"{k} {v}" for k, v in step.errors.items())
    if step.backlog:
        line += f", backlog {step.backlog}"
    return line + ("" if step.stable else " (not stable)")


def _environment() -> dict[str, Any]:
    import os

    import grpc

    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "grpc": grpc.__version__,
    }
