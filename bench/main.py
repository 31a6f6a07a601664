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
from pathlib import Path
from typing import Any

from resnet_serve.cli.options import add_connection_arguments, positive_float, positive_int, tls_from_args

EXAMPLES = """examples:
  # closed loop, concurrency 1..64, the digits model, with the in-process baseline:
  resnet-serve bench --concurrency 1:64 --baseline artifacts/digits/model.onnx --out artifacts/bench/digits
  # open loop at 50, 100 and 200 requests/s with ResNet-50 on sklearn's sample photos:
  resnet-serve bench --model resnet50 --images photos --rate 50,100,200
  # the highest rate whose p99 stays under 50 ms (bisection below 400/s):
  resnet-serve bench --rate 400 --slo-p99-ms 50
  # the KServe v2 tensor API through tritonclient, batches of 8:
  resnet-serve bench --protocol kserve --model digits --batch-size 8 --concurrency 1,4,16

Run it on the server's machine for the baseline ratio to mean anything; on a small machine the load
generator competes with the server for CPU (see docs/benchmarking.md)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    what = parser.add_argument_group("what to send")
    what.add_argument(
        "--protocol",
        choices=("image", "kserve"),
        default="image",
        help="image: our ImageClassifier API with encoded images; kserve: KServe v2 tensors",
    )
    what.add_argument(
        "--model", default="", help="model name (image API default: the server's default model)"
    )
    what.add_argument(
        "--images",
        default="auto",
        metavar="SRC",
        help="image API payloads: auto (photos for RGB models, else digits), digits, photos, "
        "a folder or a glob (default: auto)",
    )
    what.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="images per ClassifyBatch / rows per KServe tensor (default: 1)",
    )
    load = parser.add_argument_group("load (one of)").add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        metavar="LIST",
        help="closed loop: e.g. 1,2,4 or 1:64 for powers of two (default: 1,2,4,8)",
    )
    load.add_argument("--rate", metavar="LIST", help="open loop: Poisson requests/s, e.g. 100 or 50,100,200")
    parser.add_argument(
        "--slo-p99-ms",
        type=positive_float,
        metavar="MS",
        help="also find the highest throughput whose p99 latency is at most MS",
    )
    parser.add_argument(
        "--slo-iterations",
        type=positive_int,
        default=4,
        metavar="N",
        help="open-loop bisection steps for --slo-p99-ms (default: 4)",
    )
    timing = parser.add_argument_group("measurement")
    timing.add_argument(
        "--warmup", type=float, default=2.0, metavar="S", help="seconds per step (default: 2)"
    )
    timing.add_argument(
        "--window",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="measurement window in seconds (default: 2)",
    )
    timing.add_argument(
        "--max-step-time",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="give up waiting for stability after S seconds of windows (default: 30)",
    )
    timing.add_argument(
        "--stability",
        type=positive_float,
        default=0.10,
        metavar="FRACTION",
        help="windows agree when within this fraction of their mean (default: 0.10)",
    )
    timing.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="deadline per request (default: 10 s)",
    )
    timing.add_argument("--seed", type=int, default=0, help="seed of the open-loop arrival times")
    base = parser.add_argument_group("in-process baseline")
    base.add_argument(
        "--baseline",
        type=Path,
        metavar="MODEL",
        help="time this model file with the server's backend class directly (.onnx, .plan)",
    )
    base.add_argument(
        "--baseline-time",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="seconds per batch size (default: 2)",
    )
    base.add_argument(
        "--baseline-device", default="cpu", metavar="DEVICE", help="cpu, cuda or tensorrt (default: cpu)"
    )
    base.add_argument(
        "--baseline-threads",
        type=int,
        default=0,
        metavar="N",
        help="intra-op threads, as the server's --intra-op-threads (default: 0, all cores)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/bench"),
        metavar="DIR",
        help="folder for bench.json, bench.csv and the PNGs (default: artifacts/bench)",
    )
    out.add_argument("--title", default="", help="plot title (default: model, protocol and server)")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from resnet_serve.bench import extras
    from resnet_serve.bench.loadgen import parse_concurrency, parse_rates
    from resnet_serve.bench.workload import WorkloadError

    try:
        if args.rate:
            loads: list[Any] = parse_rates(args.rate)
        else:
            loads = parse_concurrency(args.concurrency or "1,2,4,8")
        if args.warmup < 0:
            raise ValueError("--warmup must be 0 or more seconds")
        if args.baseline is not None and not args.baseline.is_file():
            # baseline.measure says the same, but only after the whole sweep has run
            raise FileNotFoundError(f"--baseline {args.baseline}: no such model file")
        extras.check(extras.needs(args.protocol, args.images, args.baseline))
        return asyncio.run(_bench(args, loads))
    except (WorkloadError, ValueError, ConnectionError, OSError, extras.MissingPackage) as exc:
        print(f"error: {exc}", file=sys.stderr)
        # An unreachable server is a failure (1); bad options or input files are usage errors (2).
        return 1 if isinstance(exc, ConnectionError) else 2


async def _bench(args: argparse.Namespace, levels: list[Any]) -> int:
    from tqdm import tqdm

    from resnet_serve.bench import baseline, plots, report, slo
    from resnet_serve.bench.loadgen import Closed, Open, StepResult, Timing, run_step

    sender, workload, model = await _sender(args)
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


async def _sender(args: argparse.Namespace) -> tuple[Any, str, str]:
    """The sender for --protocol, its workload's description and the model name."""
    from resnet_serve.bench.senders import ImageSender, kserve_sender
    from resnet_serve.bench.workload import load_images
    from resnet_serve.client.aio import AsyncClient
    from resnet_serve.client.results import ClassifyError

    tls = tls_from_args(args)
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
