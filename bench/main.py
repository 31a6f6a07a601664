"""`resnet-serve bench`: latency and throughput of a running server, perf_analyzer style.

Closed loop sweeps a list of concurrencies; open loop offers Poisson traffic at fixed rates (the MLPerf
"Server" scenario) and times each request from its scheduled send time. Every step warms up, then measures
in windows until three agree within the stability tolerance. Results go to a table, bench.json, bench.csv
and two PNG plots in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import socket
import sys
from typing import Any

from resnet_serve.client.channel import TLSConfig


async def bench(args: argparse.Namespace, levels: list[Any], tls: TLSConfig | None) -> int:
    """Run the sweep the `resnet-serve bench` flags in ``args`` ask for, over ``levels`` (concurrencies or
    rates), and write the report; 0 when any request completed. Raises ConnectionError when the server does
    not answer, WorkloadError for unusable images."""
    from tqdm import tqdm

    from resnet_serve.bench import baseline, plots, report, slo
    from resnet_serve.bench.loadgen import Closed, Open, StepResult, Timing, run_step

    sender, workload, model = await _sender(args, tls)
    timing = Timing(
        args.warmup, args.window, args.max_step_time, args.stability, drain_s=min(args.timeout, 5.0)
    )
    loads: list[Closed | Open] = (
        [Open(float(r), args.seed) for r in levels] if args.rate else [Closed(int(c)) for c in levels]
    )
    steps: list[StepResult] = []
    progress = tqdm(total=len(loads), unit="step", file=sys.stderr, disable=None, leave=False)
    try:
        for load in loads:
            progress.set_description(load.label)
            step = await run_step(sender, load, timing)
            steps.append(step)
            progress.update(1)
            tqdm.write(_step_line(step), file=sys.stderr)
        slo_doc = None
        if args.slo_p99_ms is not None:
            if args.rate:

                async def at(rate: float) -> StepResult:
                    step = await run_step(sender, Open(rate, args.seed), timing)
                    tqdm.write(_step_line(step, "slo-search"), file=sys.stderr)
                    return step

                steps += await slo.bisect_rate(at, list(steps), args.slo_p99_ms, args.slo_iterations)
            slo_doc = slo.best(steps, args.slo_p99_ms, "bisection" if args.rate else "sweep")
    finally:
        progress.close()
        await sender.close()

    base_results: list[baseline.BaselineResult] = []
    if args.baseline is not None:
        sizes = {sender.batch_size} | {round(s.server["batch_size"]) for s in steps if s.server}
        base_results = await asyncio.to_thread(
            baseline.measure,
            args.baseline,
            sorted(max(1, n) for n in sizes),
            args.baseline_time,
            args.baseline_device,
            args.baseline_threads,
        )

    config = {
        "server": args.server,
        "protocol": args.protocol,
        "model": model,
        "batch_size": sender.batch_size,
        "workload": workload,
        "mode": "open" if args.rate else "closed",
        "levels": levels,
        "warmup_s": args.warmup,
        "window_s": args.window,
        "max_step_s": args.max_step_time,
        "stability": args.stability,
        "timeout_s": args.timeout,
        "seed": args.seed,
        "baseline_model": str(args.baseline) if args.baseline else None,
        "baseline_threads": args.baseline_threads,
        "command": "resnet-serve bench "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }
    doc = report.document(config, _environment(), steps, base_results, slo_doc)
    written = report.write(doc, args.out)
    title = args.title or f"{model or 'default model'} via {args.protocol} API at {args.server}"
    written.append(plots.latency_throughput(doc, args.out / "latency_throughput.png", title))
    written.append(plots.latency_cdf(steps, args.out / "latency_cdf.png", title))
    print(report.table(doc))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0 if any(s.requests for s in steps) else 1


async def _sender(args: argparse.Namespace, tls: TLSConfig | None) -> tuple[Any, str, str]:
    """The sender for --protocol, its workload's description and the model name."""
    from resnet_serve.bench.senders import ImageSender, kserve_sender
    from resnet_serve.bench.workload import load_images
    from resnet_serve.client.aio import AsyncClient
    from resnet_serve.client.results import ClassifyError

    if args.protocol == "kserve":
        sender = await kserve_sender(args.server, args.model, tls, args.batch_size, args.timeout)
        return sender, sender.description, sender.model_name
    # No retries: a benchmark must see every UNAVAILABLE, not hide it behind backoff.
    client = AsyncClient(args.server, model=args.model, timeout=args.timeout, retry=None, tls=tls)
    try:
        await client.wait_until_ready(timeout=min(args.timeout, 10.0))
        models = await client.list_models()
    except ClassifyError as exc:
        await client.close()
        raise ConnectionError(exc.message) from None
    chosen = next((m for m in models if m.name == args.model or (not args.model and m.is_default)), None)
    if args.model and chosen is None:
        await client.close()
        raise ConnectionError(f"the server has no model {args.model!r} ({', '.join(m.name for m in models)})")
    channels = chosen.input_shape[0] if chosen and chosen.input_shape else None
    description, images = load_images(args.images, channels)
    name = chosen.name if chosen else args.model
    return ImageSender(client, images, args.batch_size, args.timeout, description), description, name


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
