"""pytest's hooks and the shared fixtures. Helpers the tests import live in tests/support/ (a conftest.py is
not a module to import from: pytest may load it under another name)."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tiny_model import write_tiny_onnx


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A command run in-process (`main(["serve", ...])`, `entrypoint`) installs its log handler on the root
    logger, bound to the stderr pytest captured for that test; left there, every later log call (onnx's INFO
    lines in an export test) would write to a closed stream and print a "Logging error" traceback."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    grpc_level = logging.getLogger("grpc").level
    ours_level = logging.getLogger("resnet_serve").level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("grpc").setLevel(grpc_level)
    logging.getLogger("resnet_serve").setLevel(ours_level)


# Every server a test starts in a subprocess (they inherit this) serves HTTP/REST on a free port: the
# default, Triton's 8000, would collide between test runs sharing a machine. A test's own --http-port wins.
os.environ.setdefault("RESNET_SERVE_HTTP_PORT", "0")

# The server's default ports (Triton's HTTP, gRPC and metrics ports). Another process may hold any of them on
# a user's or CI's machine, so no test may depend on one being free: the suite holds each one that is free for
# its whole run, and a server a test starts on a default port fails at once, on every machine, instead of only
# where something else happens to listen there.
DEFAULT_PORTS = (8000, 8001, 8002)


def _hold(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:`port` without SO_REUSEPORT (so no server can share it), or None if it is taken."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
    except OSError:
        holder.close()
        return None  # someone else holds it: the same situation, already
    return holder


@pytest.fixture(scope="session", autouse=True)
def _default_ports_are_taken() -> Iterator[None]:
    held = [s for s in (_hold(port) for port in DEFAULT_PORTS) if s is not None]
    yield
    for s in held:
        s.close()


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docker",
        action="store_true",
        help="run only the tests marked docker (they need the built image and a Docker engine: "
        "`make image-test` sets both up)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Docker tests need the image `make image-test` builds and a running engine: deselected without --docker,
    # so `make test` never touches Docker; with --docker, only they run.
    docker = config.getoption("--docker")
    keep = [item for item in items if (item.get_closest_marker("docker") is not None) == docker]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
    # GPU tests are skipped with a visible reason when there is no GPU: never reported as passing.
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 10-class ONNX classifier of 8x8 grayscale images, with resnet_serve metadata."""
    return write_tiny_onnx(tmp_path_factory.mktemp("tiny") / "model.onnx")
