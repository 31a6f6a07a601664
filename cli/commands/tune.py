"""Find the serving settings with the most throughput whose p99 latency stays within an SLO, on this machine.

tune tries what exists here: each installed runtime (ONNX Runtime; OpenVINO with the [openvino] extra) at
each precision (FP32; INT8 with --int8; BF16 on OpenVINO where the CPU computes it natively), then the split
of the cores into instances × intra-op threads, then max batch × queue delay. A variant whose logits on real
images do not match ONNX Runtime FP32 within its precision's release tolerance (the numbers `resnet-serve
verify` uses) is refused before it is measured. Every candidate is started as the real server on 127.0.0.1
and measured with bench's load generator: a closed loop at --concurrency (its p99 is checked against the
SLO), then Poisson arrivals at 70 % of that throughput. The winner is the fastest candidate that meets the
SLO; tune says which constraint bound the choice.

Output in --out: tune.toml (serve it with `resnet-serve serve --config tune.toml`), tune.json, tune.png and
state.jsonl, which lets a run stopped by its budget resume: run the same command again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet_serve.cli.options import positive_float, positive_int

EXAMPLES = """examples:
  # ResNet-50 FP32 and INT8, p99 within 200 ms at 16 concurrent requests, 15 minutes:
  resnet-serve tune artifacts/resnet50/model.onnx --int8 artifacts/resnet50/model.int8.onnx \\
      --slo-p99-ms 200 --concurrency 16 --budget-min 15 --out artifacts/tune/resnet50
  # then serve the winner:
  resnet-serve serve --config artifacts/tune/resnet50/tune.toml

Run it on the machine (and core count) that will serve: the best settings depend on the CPU. The load
generator shares the machine with the server, as a co-located client would (docs/benchmarking.md)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.epilog = EXAMPLES
    parser.add_argument("model", type=Path, metavar="MODEL.onnx", help="the FP32 ONNX model")
    parser.add_argument(
        "--slo-p99-ms", type=positive_float, required=True, metavar="MS", help="p99 latency limit"
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=16,
        metavar="N",
        help="requests in flight during the measurement (default: %(default)s)",
    )
    parser.add_argument(
        "--int8",
        type=Path,
        metavar="FILE",
        help="the INT8 QDQ file of the same model (resnet-serve quantize)",
    )
    parser.add_argument("--name", default="", help="served model name (default: the file's stem)")
    parser.add_argument(
        "--runtimes",
        default="onnxruntime,openvino",
        metavar="LIST",
        help="runtimes to try where installed (default: %(default)s)",
    )
    parser.add_argument(
        "--protocol",
        choices=("kserve", "image"),
        default="kserve",
        help="kserve: tensors (the model alone); image: encoded images, decode included (default: kserve)",
    )
    parser.add_argument(
        "--budget-min",
        type=positive_float,
        default=15.0,
        metavar="MIN",
        help="stop starting candidates after this many minutes (default: %(default)s)",
    )
    parser.add_argument(
        "--cores", type=int, default=0, metavar="N", help="cores to split among instances (default: all)"
    )
    parser.add_argument(
        "--window", type=positive_float, default=1.5, metavar="S", help="measurement window (default: 1.5)"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/tune"), help="output folder")
    parser.add_argument("--fresh", action="store_true", help="discard an earlier run's measurements in --out")
    parser.add_argument(
        "--repository",
        type=Path,
        metavar="DIR",
        help="also write the winner's settings into this model repository's config.json for --name",
    )


def run(args: argparse.Namespace) -> int:
    from resnet_serve.bench.tune.main import TuneOptions, tune

    runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    options = TuneOptions(
        model=args.model,
        slo_p99_ms=args.slo_p99_ms,
        concurrency=args.concurrency,
        int8=args.int8,
        name=args.name,
        runtimes=runtimes,
        protocol=args.protocol,
        budget_s=args.budget_min * 60.0,
        cores=args.cores,
        out=args.out,
        fresh=args.fresh,
        repository=args.repository,
        window_s=args.window,
    )
    return tune(options)
