"""`resnet-serve classify`: send image files to a server and print their top-k labels."""

from __future__ import annotations

import argparse
import asyncio
import sys

from resnet_serve.cli.options import (
    OptionError,
    add_connection_arguments,
    positive_float,
    positive_int,
    server_from_args,
    tls_from_args,
    token_from_args,
)
from resnet_serve.client import output
from resnet_serve.client.classify import ClassifyOptions, classify_all
from resnet_serve.client.paths import expand

EXAMPLES = """examples:
  resnet-serve classify cat.jpg dog.png
  resnet-serve classify --top-k 3 photos/                 # every image under photos/, recursively
  resnet-serve classify 'scans/**/*.png' --format json > results.jsonl
  resnet-serve classify --server gpu-box:8001 --model resnet50 --concurrency 16 --format csv images/

The summary (count, errors, latency percentiles) goes to stderr; the exit status is 1 if any image failed
(after all the others were classified), 2 for bad options, 141 (quietly) when stdout's reader stops reading
(`| head -1`)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Classify image files with a running resnet-serve server."
    parser.epilog = EXAMPLES
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
        help="stdout: human lines, JSON lines (a score that is not a number is null) or CSV (default: human)",
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
    """0 when every image was classified, 1 when any failed (after all the others) or no server answered;
    bad options (e.g. an unreadable certificate file) are errors with exit status 2."""
    server = server_from_args(args)
    expansion = expand(args.paths)
    if skipped := expansion.summary():
        print(skipped, file=sys.stderr)
    options = ClassifyOptions(
        server=server,
        model=args.model,
        model_version=args.model_version,
        top_k=args.top_k,
        format=args.format,
        concurrency=args.concurrency,
        timeout=args.timeout,
        no_progress=args.no_progress,
        tls=tls_from_args(args),
        token=token_from_args(args),
    )
    try:
        return asyncio.run(classify_all(options, expansion.inputs))
    except ValueError as exc:  # e.g. a certificate file that holds no PEM
        raise OptionError(str(exc)) from None
