"""The `resnet-serve` program: one subcommand per stage.

Each stage's module is imported only when its subcommand runs, so `resnet-serve serve` never loads torch and
`resnet-serve --help` starts instantly. Each subcommand's flags live in `cli/commands/<name>.py`, which turns
them into the library's typed options; `main` is the one place where an error (a `UserError` or an
`OSError`) becomes the one line a user sees and the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # under resnet_serve.cli.commands: configure(parser) and run(args) -> exit status
    summary: str
    #: Exit status for a UserError or an OSError: 2 where the command treats bad input as a usage error.
    #: A ConnectionError (no server answered) or a Failure (it ran and failed) is always 1, not a usage error.
    error_status: int = 1
    #: Appended to the line for an OSError (a file that cannot be read or written).
    os_hint: str = ""

    @property
    def import_path(self) -> str:
        return f"{OUR_PACKAGE}.cli.commands.{self.module}"


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train",
        "train a ResNet (digits, an image folder or CIFAR-10) and write a checkpoint",
        error_status=2,
        os_hint=" (check --out and --data)",
    ),
    "export": Command(
        "export",
        "fold BatchNorm and export a checkpoint or torchvision weights to ONNX",
    ),
    "quantize": Command("quantize", "INT8 post-training quantization (QDQ) calibrated on real images"),
    "verify": Command(
        "verify",
        "parity report: PyTorch vs folded vs ONNX Runtime FP32/INT8 (vs TensorRT)",
    ),
    "package": Command("package", "lay out ONNX models as a versioned model repository for serving"),
    "build-engine": Command("build_engine", "compile an ONNX model to a TensorRT engine (GPU nodes)"),
    "serve": Command(
        "serve", "run the gRPC inference server (image API + KServe v2) with metrics", error_status=2
    ),
    "classify": Command(
        "classify", "send image files to a server and print the top-k labels", error_status=2
    ),
    "bench": Command(
        "bench", "measure latency and throughput against a server (closed or open loop)", error_status=2
    ),
    "tune": Command(
        "tune",
        "find the serving settings with the most throughput within a p99 latency SLO",
        error_status=2,
    ),
    "demo": Command("demo", "train, export, serve and classify the digits end to end"),
    "health": Command(
        "health", "ask a server's health service whether it serves (exit 0 when SERVING)", error_status=2
    ),
    "entrypoint": Command(
        "entrypoint",
        "the container entrypoint: build TensorRT engines on this node's GPU (cached), then serve",
        error_status=2,
    ),
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
    from resnet_serve.server.observability.logging import quiet_grpc_core  # standard library only

    quiet_grpc_core()  # before a command imports grpc: no gRPC-core INFO lines in any command's output
    try:
        module = importlib.import_module(cmd.import_path)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == OUR_PACKAGE:
            raise  # a bug of ours, not a missing extra
        print(
            f"resnet-serve {name}: needs the Python package '{exc.name}', which is not installed "
            f"(install the matching extra, e.g. pip install 'resnet-serve[train]' or '[serve]')",
            file=sys.stderr,
        )
        return 2
    from resnet_serve.cli.helpformat import HelpFormatter

    parser = argparse.ArgumentParser(
        prog=f"resnet-serve {name}",
        description=(module.__doc__ or cmd.summary).strip(),
        formatter_class=HelpFormatter,  # every command's help: examples as written, each default once
    )
    module.configure(parser)
    args = parser.parse_args(rest)
    # here: nothing but the subcommand loads before it runs
    from resnet_serve.formats.errors import UserError

    try:
        status = int(module.run(args))
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at exit
        return status
    except BrokenPipeError as exc:
        if exc.filename is not None:  # a file's, not stdout's: an error like any other
            return _failed(name, cmd, exc)
        return _stdout_closed()
    except (UserError, OSError) as exc:
        return _failed(name, cmd, exc)
    except KeyboardInterrupt:
        print(f"resnet-serve {name}: interrupted", file=sys.stderr)
        return 130


def _failed(name: str, cmd: Command, exc: Exception) -> int:
    """The one place a user-facing error becomes its line: the layers raise, none of them prints. Every
    command's error line has argparse's shape for a usage error: "resnet-serve NAME: error: ..."."""
    from resnet_serve.formats.errors import Failure

    hint = cmd.os_hint if isinstance(exc, OSError) else ""
    print(f"resnet-serve {name}: error: {error_line(exc)}{hint}", file=sys.stderr)
    failed = isinstance(exc, ConnectionError | Failure)  # it ran and failed: 1, never a usage error
    return 1 if failed else cmd.error_status


def _stdout_closed() -> int:
    """stdout's reader went away (`resnet-serve classify ... | head -1`): stop quietly, as a Unix tool does.

    The pattern of Python's documentation (signal module, "Note on SIGPIPE"): point stdout at /dev/null so
    that the interpreter's final flush cannot fail again, and exit. The status is 141 (128 + SIGPIPE), what
    the shell reports for a C tool that SIGPIPE ended, rather than the documentation's 1, which `classify`
    already uses for "an image failed"."""
    import os
    import signal

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def error_line(exc: BaseException) -> str:
    """The message of a user-facing error; for an OSError, its reason and the path it concerns (atomic
    writes name the destination path)."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
