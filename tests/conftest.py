"""Shared test configuration. Engineers add shared fixtures below the marker hooks."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet_serve.formats.metadata import ModelMetadata
from resnet_serve.runtime.base import Backend


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A command run in-process (`main(["serve", ...])`, `entrypoint`) installs its log handler on the root
    logger, bound to the stderr pytest captured for that test; left there, every later log call (onnx's INFO
    lines in an export test) would write to a closed stream and print a "Logging error" traceback."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    grpc_level = logging.getLogger("grpc").level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("grpc").setLevel(grpc_level)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # GPU tests are skipped with a visible reason when there is no GPU: never reported as passing.
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# --- server: a tiny ONNX classifier with our metadata_props, built without torch -------------------------

TINY_PREPROCESS = {
    "color": "L",
    "resize": 8,
    "crop": 8,
    "interpolation": "bilinear",
    "mean": [0.5],
    "std": [0.25],
}
TINY_LABELS = [f"class-{i}" for i in range(10)]


def write_tiny_onnx(path: Path, seed: int = 0, classes: int = 10, slow_layers: int = 0) -> Path:
    """conv 3x3 (4 filters) → relu → flatten → gemm: (N, 1, 8, 8) float32 "input" → (N, classes) "logits".

    `slow_layers` > 0 inserts that many 1024x1024 matmuls (sharing one weight, so the file stays small):
    about 1M multiply-adds per row each, to make compute slow enough to observe queues.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w_conv = rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    b_conv = rng.normal(0, 0.1, (4,)).astype(np.float32)
    w_fc = rng.normal(0, 0.2, (classes, 4 * 8 * 8)).astype(np.float32)
    b_fc = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w_conv", "b_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
    ]
    extra: list[onnx.TensorProto] = []
    features = "flat"
    if slow_layers:
        w_in = rng.normal(0, 0.1, (4 * 8 * 8, 1024)).astype(np.float32)
        w_hidden = (np.eye(1024) + rng.normal(0, 0.01, (1024, 1024))).astype(np.float32)
        w_out = rng.normal(0, 0.05, (1024, 4 * 8 * 8)).astype(np.float32)
        extra = [
            numpy_helper.from_array(a, n) for a, n in ((w_in, "w_in"), (w_hidden, "w_h"), (w_out, "w_out"))
        ]
        nodes.append(helper.make_node("MatMul", ["flat", "w_in"], ["h0"]))
        for i in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [f"h{i}", "w_h"], [f"h{i + 1}"]))
        nodes.append(helper.make_node("MatMul", [f"h{slow_layers}", "w_out"], ["slow_out"]))
        features = "slow_out"
    nodes.append(helper.make_node("Gemm", [features, "w_fc", "b_fc"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w_conv, "w_conv"), (b_conv, "b_conv"), (w_fc, "w_fc"), (b_fc, "b_fc"))
        ]
        + extra,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    labels = TINY_LABELS if classes == 10 else [str(i) for i in range(classes)]
    meta = ModelMetadata("tiny", labels, TINY_PREPROCESS, "0" * 64, {"onnx": onnx.__version__}, "fp32")
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 10-class ONNX classifier of 8x8 grayscale images, with resnet_serve metadata."""
    return write_tiny_onnx(tmp_path_factory.mktemp("tiny") / "model.onnx")


def assert_one_line_error(capsys: pytest.CaptureFixture[str], rc: int, out: Path, needle: str) -> None:
    """A command failed the way users should see failures: non-zero exit, one line on stderr naming the
    problem, and no output file (nor a temporary one) left behind."""
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    assert needle in err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


# --- runtimes: the backend contract and the server tests run against every CPU runtime installed ----------

OPENVINO_MISSING = importlib.util.find_spec("openvino") is None
# Parametrise a test or fixture with these to run it on ONNX Runtime and on OpenVINO (skipped, with the
# reason shown, where the openvino extra is not installed; CI installs it through the dev extra).
RUNTIMES = [
    "onnxruntime",
    pytest.param(
        "openvino",
        marks=pytest.mark.skipif(
            OPENVINO_MISSING, reason="openvino not installed: pip install '.[openvino]'"
        ),
    ),
]


def runtime_flags(runtime: str, cache_dir: Path) -> list[str]:
    """`resnet-serve serve` flags that run every model on `runtime` (ONNX Runtime: the defaults, unchanged;
    OpenVINO: its compiled-model cache in a test directory, never the user's)."""
    if runtime == "onnxruntime":
        return []
    return ["--backend", runtime, "--openvino-cache-dir", str(cache_dir)]


def runtime_backends(path: Path, runtime: str, instances: int = 1) -> list[Backend]:
    """`instances` execution instances of the model at `path` on `runtime`, as the server builds them."""
    from resnet_serve.runtime.factory import InstanceOptions, create_backends

    return create_backends(path, runtime, instances, InstanceOptions(intra_op_threads=1))
