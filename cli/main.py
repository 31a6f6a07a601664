"""The `resnet-serve` program: one subcommand per stage.

Each stage's module is imported only when its subcommand runs, so `resnet-serve serve` never loads torch and
`resnet-serve --help` starts instantly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command(
        "training.loop", "train a ResNet (digits, an image folder or CIFAR-10) and write a checkpoint"
    ),
    "export": Command(
        "export.onnx_export", "fold BatchNorm and export a checkpoint or torchvision weights to ONNX"
    ),
    "quantize": Command("export.quantize", "INT8 post-training quantization (QDQ) calibrated on real images"),
    "verify": Command(
        "export.verify", "parity report: PyTorch vs folded vs ONNX Runtime FP32/INT8 (vs TensorRT)"
    ),
    "package": Command("export.package", "lay out ONNX models as a versioned model repository for serving"),
    "build-engine": Command("export.engine", "compile an ONNX model to a TensorRT engine (GPU nodes)"),
    "serve": Command("server.main", "run the gRPC inference server (image API + KServe v2) with metrics"),
    "classify": Command("client.classify", "send image files to a server and print the top-k labels"),
    "bench": Command("bench.main", "measure latency and throughput against a server (closed or open loop)"),
    "demo": Command("cli.demo", "train, export, serve and classify the digits end to end"),
}

OUR_PACKAGE = "resnet_serve"

EPILOG = """typical flow:
  resnet-serve train --out artifacts/digits/model.pt
  resnet-serve export --checkpoint artifacts/digits/model.pt --out artifacts/digits/model.onnx
  resnet-serve serve --model digits=artifacts/digits/model.onnx
  resnet-serve classify --server localhost:8001 path/to/images/

Run `resnet-serve COMMAND --help` for a command's options."""


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-serve",
        description="From a trained ResNet to a production gRPC inference service.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sub.add_parser(name, help=cmd.summary)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("resnet-serve")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        # Unknown commands, --help and --version are all answered by the top-level parser.
        parser = _top_level_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)
        return 2
    name, rest = argv[0], argv[1:]
    cmd = COMMANDS[name]
    try:
        module = importlib.import_module(f"{OUR_PACKAGE}.{cmd.module}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == OUR_PACKAGE:
            raise  # a bug of ours, not a missing extra
        print(
            f"resnet-serve {name}: needs the Python package '{exc.name}', which is not installed "
            f"(install the matching extra, e.g. pip install 'resnet-serve[train]' or '[serve]')",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(
        prog=f"resnet-serve {name}",
        description=(module.__doc__ or cmd.summary).strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    module.configure(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print(f"resnet-serve {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
