"""Add an ONNX model to a Triton-like model repository, as the next version, for `resnet-serve serve`.

    <repo>/<model>/config.json          model-level settings, and the list of versions
    <repo>/<model>/config.pbtxt         with --format triton: Triton's model configuration (and labels.txt)
    <repo>/<model>/<version>/model.onnx one directory per integer version (1, 2, ...)

The layout and every config.json key are documented in docs/export.md; config.pbtxt in docs/server.md.

examples:
  resnet-serve package artifacts/digits/model.onnx --repo model_repository --name digits
  resnet-serve package artifacts/digits/model.int8-ort.onnx --repo model_repository --name digits \\
      --max-batch-size 64 --preferred-batch-sizes 16 32 64 --max-queue-delay-us 1000
  resnet-serve package artifacts/digits/model.onnx --repo model_repository --name digits --format triton
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet_serve.cli.options import Flatten, positive_ints
from resnet_serve.export import package
from resnet_serve.export.errors import ExportError
from resnet_serve.formats.repository import BACKENDS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="ONNX model from `resnet-serve export` or `quantize`")
    parser.add_argument("--repo", type=Path, required=True, help="model repository directory")
    parser.add_argument("--name", required=True, help="model name (the directory under --repo)")
    parser.add_argument("--version", type=int, help="version number (default: one above the latest)")
    parser.add_argument(
        "--format",
        choices=package.FORMATS,
        help="triton: also write config.pbtxt and labels.txt, so Triton serves the directory too "
        "[triton when the model already has a config.pbtxt, else resnet-serve]",
    )
    settings = parser.add_argument_group(
        "serving settings (model-level; when adding a version, omitted ones keep the model's current values)"
    )
    settings.add_argument("--max-batch-size", type=int, help="largest batch the server may form [32]")
    settings.add_argument(
        "--preferred-batch-sizes",
        type=positive_ints,
        nargs="+",
        action=Flatten,
        metavar="N",
        help="batch sizes the batcher aims for, as 16 32 or 16,32 (serve's spelling) "
        "[8 16 32 64, up to the max]",
    )
    settings.add_argument(
        "--max-queue-delay-us",
        type=int,
        help="longest a request waits for a batch to fill, microseconds [0: none, as Triton]",
    )
    settings.add_argument(
        "--max-queue-delay-ms",
        type=float,
        metavar="MS",
        help="the same as --max-queue-delay-us, in milliseconds (as serve's alias)",
    )
    settings.add_argument("--backend", choices=BACKENDS, help="preferred backend [onnxruntime]")
    settings.add_argument("--instances", type=int, help="model instances (sessions) to run [1]")


def run(args: argparse.Namespace) -> int:
    if args.max_queue_delay_ms is not None:
        if args.max_queue_delay_us is not None:
            raise ExportError("give the queue delay once: --max-queue-delay-us or --max-queue-delay-ms")
        args.max_queue_delay_us = round(args.max_queue_delay_ms * 1000)  # config.json keeps microseconds
    settings = package.ServingSettings(
        args.max_batch_size,
        args.preferred_batch_sizes,
        args.max_queue_delay_us,
        args.backend,
        args.instances,
    )
    cfg, entry = package.package(args.model, args.repo, args.name, args.version, settings, args.format)
    print(
        f"packaged {args.model} as {cfg.name} version {entry.version} ({entry.precision}, {entry.arch}) "
        f"in {args.repo}; versions now {[v.version for v in cfg.versions]}; "
        f"max batch {cfg.max_batch_size}, "
        f"preferred {cfg.dynamic_batching.preferred_batch_sizes}, queue delay "
        f"{cfg.dynamic_batching.max_queue_delay_us} µs, backend {cfg.backend}"
    )
    return 0
