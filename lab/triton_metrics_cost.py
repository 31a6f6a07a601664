"""What do Triton's metric names (nv_inference_*) cost? The per-request update path and a scrape, with and
without them, in one run.

The nv_* families are built from the same counters as ours when /metrics is scraped, so a request should
cost the same either way; a scrape renders about 14 more series per model version. Both are measured here:

1. per request: the metric calls one request causes (in_flight, set_queue_depth, request_done with three
   phases, a share of batch_executed), best of `--repeats` loops of `--calls`, in this thread's CPU ns;
2. per scrape: `ServerMetrics.render()` with `--models` model versions that have seen traffic, in µs.

    python -m lab.triton_metrics_cost --out artifacts/bench/triton_metrics_cost.json

Budget (issue #13): at most 2 % of a request's cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from resnet_serve.formats.files import write_json_atomic
from resnet_serve.server.observability.metrics import ServerMetrics


def request_ns(triton_names: bool, calls: int, repeats: int, batch: int = 8) -> float:
    model = ServerMetrics(registry=CollectorRegistry(), triton_names=triton_names).model("m", "1")
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time_ns()
        for i in range(calls):
            with model.in_flight():
                model.set_queue_depth(i & 7)
                if i % batch == 0:
                    model.batch_executed(batch, 0.002)
                model.request_done("success", 0.004, 0.001, 0.0005, 0.002)
        best = min(best, (time.thread_time_ns() - start) / calls)
    return best


def scrape_us(triton_names: bool, models: int, repeats: int) -> float:
    metrics = ServerMetrics(registry=CollectorRegistry(), triton_names=triton_names)
    for m in range(models):
        metrics.model(f"m{m}", "1").request_done("success", 0.004, 0.001, 0.0005, 0.002)
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time_ns()
        metrics.render()
        best = min(best, (time.thread_time_ns() - start) / 1000)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.triton_metrics_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=50_000, help="requests per timed loop")
    parser.add_argument("--repeats", type=int, default=5, help="timed loops; the best counts")
    parser.add_argument("--models", type=int, default=10, help="model versions in the scraped registry")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.calls, args.repeats, args.models) < 1:
        parser.error("--calls, --repeats and --models must be positive")
    result: dict[str, Any] = {"benchmark": "triton_metrics_cost", "load_average": os.getloadavg()}
    for names in (False, True):
        label = "with_nv" if names else "without_nv"
        result[f"request_ns_{label}"] = request_ns(names, args.calls, args.repeats)
        result[f"scrape_us_{label}"] = scrape_us(names, args.models, args.repeats * 4)
    per_request = result["request_ns_with_nv"] - result["request_ns_without_nv"]
    print(
        f"per request: {result['request_ns_without_nv']:.0f} ns without nv_*, "
        f"{result['request_ns_with_nv']:.0f} ns with ({per_request:+.0f} ns)"
    )
    print(
        f"per scrape of {args.models} model versions: {result['scrape_us_without_nv']:.0f} µs without nv_*, "
        f"{result['scrape_us_with_nv']:.0f} µs with (load average {result['load_average'][0]:.1f})"
    )
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
