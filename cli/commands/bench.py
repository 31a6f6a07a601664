"""`resnet-serve bench`: latency and throughput of a running server, perf_analyzer style.

Closed loop sweeps a list of concurrencies; open loop offers Poisson traffic at fixed rates (the MLPerf
"Server" scenario) and times each request from its scheduled send time. Every step warms up, then measures
in windows until three agree within the stability tolerance. Results go to a table, bench.json, bench.csv
and two PNG plots in --out.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from resnet_serve.cli.options import (
    OptionError,
    add_connection_arguments,
    positive_float,
    positive_int,
    server_from_args,
    tls_from_args,
    token_from_args,
)

EXAMPLES = """examples:
  # closed loop, concurrency 1..64, the digits model, with the in-process baseline:
  resnet-serve bench --concurrency 1:64 --baseline artifacts/digits/model.onnx --out artifacts/bench/digits
  # open loop at 50, 100 and 200 requests/s with ResNet-50 on sklearn's sample photos:
  resnet-serve bench --model resnet50 --images photos --rate 50,100,200
  # the highest rate whose p99 stays under 50 ms (bisection below 400/s):
  resnet-serve bench --rate 400 --slo-p99-ms 50
  # the KServe v2 tensor API through tritonclient, batches of 8:
  resnet-serve bench --protocol kserve --model digits --batch-size 8 --concurrency 1,4,16
  # as perf_analyzer: KServe v2 over HTTP, concurrency 1 to 8 one by one, 5 s windows, a CSV:
  resnet-serve bench -i http --server localhost:8000 -m digits --concurrency-range 1:8 \\
      --measurement-interval 5000 -f results.csv

Exit status: 0 when every measured request succeeded; 1 (after writing the report) when any failed, or when
the server stopped answering (every request UNAVAILABLE for 5 s: the sweep stops there); 2 for bad options or
--images files that do not decode; 130 on Ctrl-C, after writing the steps already measured.

Run it on the server's machine for the baseline ratio to mean anything; on a small machine the load
generator competes with the server for CPU (see docs/benchmarking.md)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.epilog = EXAMPLES
    what = parser.add_argument_group("what to send")
    what.add_argument(
        "--protocol",
        choices=("image", "kserve"),
        help="image: our ImageClassifier API with encoded images; kserve: KServe v2 tensors "
        "(default: image; kserve with -i http)",
    )
    what.add_argument(
        "-i",
        dest="transport",
        choices=("grpc", "http"),
        default="grpc",
        help="as perf_analyzer: the KServe v2 transport (default: grpc); http (tritonclient.http, one "
        "--server, localhost:8000 unless given) implies --protocol kserve",
    )
    what.add_argument(
        "-m",
        "--model",
        default="",
        help="model name (image API default: the server's default model; KServe: the first ready one)",
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
        help="closed loop: e.g. 1,2,4, or LO:HI doubling from LO up to HI (1:64 → 1,2,4,...,64; 3:12 → "
        "3,6,12) (default: 1,2,4,8)",
    )
    load.add_argument(
        "--concurrency-range",
        metavar="START:END[:STEP]",
        help="closed loop, as perf_analyzer: START to END in steps of STEP (default 1), linear: "
        "1:4 → 1,2,3,4; 3:3 → 3",
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
    window = timing.add_mutually_exclusive_group()
    window.add_argument(
        "--window",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="measurement window in seconds (default: 2)",
    )
    window.add_argument(
        "--measurement-interval",
        "-p",
        type=positive_float,
        metavar="MS",
        help="the measurement window in milliseconds, as perf_analyzer (instead of --window)",
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
    out.add_argument(
        "-f",
        dest="csv",
        type=Path,
        metavar="FILE.csv",
        help="also write the results table as CSV to FILE (as perf_analyzer's -f; bench.csv's columns)",
    )
    out.add_argument("--title", default="", help="plot title (default: model, protocol and server)")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """0 when every measured request succeeded; bad options and unusable input files are errors with exit
    status 2; a server that does not answer (ConnectionError) or failed requests (Failure) exit 1."""
    from resnet_serve.bench import extras
    from resnet_serve.bench.loadgen import parse_concurrency, parse_concurrency_range, parse_rates
    from resnet_serve.bench.main import BenchOptions, bench
    from resnet_serve.formats.errors import UserError

    tls = tls_from_args(args)
    protocol = args.protocol or ("kserve" if args.transport == "http" else "image")
    if args.transport == "http" and protocol != "kserve":
        raise OptionError(
            "-i http benchmarks KServe v2 over HTTP: drop --protocol image (the image API is gRPC)"
        )
    server = server_from_args(args)
    if args.transport == "http" and not getattr(args, "_servers_given", None):
        server = "localhost:8000"  # the HTTP port, as perf_analyzer's default for -i http
    window = args.measurement_interval / 1000 if args.measurement_interval else args.window
    try:
        if args.rate:
            loads: list[Any] = parse_rates(args.rate)
        elif args.concurrency_range:
            loads = parse_concurrency_range(args.concurrency_range)
        else:
            loads = parse_concurrency(args.concurrency or "1,2,4,8")
        if args.warmup < 0:
            raise ValueError("--warmup must be 0 or more seconds")
        if args.baseline is not None and not args.baseline.is_file():
            # baseline.measure says the same, but only after the whole sweep has run
            raise FileNotFoundError(f"--baseline {args.baseline}: no such model file")
        # Everything the run will import, checked before it starts (bench/extras.py).
        extras.check(extras.needs(protocol, args.images, args.baseline))
        options = BenchOptions(
            server=server,
            tls=tls,
            token=token_from_args(args),
            protocol=protocol,
            transport=args.transport,
            model=args.model,
            images=args.images,
            batch_size=args.batch_size,
            open_loop=bool(args.rate),
            slo_p99_ms=args.slo_p99_ms,
            slo_iterations=args.slo_iterations,
            warmup=args.warmup,
            window=window,
            max_step_time=args.max_step_time,
            stability=args.stability,
            timeout=args.timeout,
            seed=args.seed,
            baseline=args.baseline,
            baseline_time=args.baseline_time,
            baseline_device=args.baseline_device,
            baseline_threads=args.baseline_threads,
            out=args.out,
            csv=args.csv,
            title=args.title,
        )
        return asyncio.run(bench(options, loads))
    except ValueError as exc:  # a bad --rate/--concurrency list or --warmup; WorkloadError is a UserError
        if isinstance(exc, UserError):
            raise
        raise OptionError(str(exc)) from None
