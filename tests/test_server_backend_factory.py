"""Building a backend for a model file without a GPU: the TensorRT branch is reached by extension, passes
the server's device setting as the GPU index TensorRTBackend takes, and a node without TensorRT gets a
one-line BackendError (a load failure the server reports), never an ImportError traceback."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from resnet_serve.formats.sidecar import SIDECAR_FORMAT, sidecar_path
from resnet_serve.runtime import tensorrt as trt_backend
from resnet_serve.runtime.base import BackendError
from resnet_serve.runtime.factory import backend_for, create_backend
from resnet_serve.server.app import InferenceServer, StartupError
from resnet_serve.server.config import ModelSettings, ServerConfig


def write_plan(directory: Path) -> Path:
    """An engine file with the sidecar `build-engine` writes next to it."""
    plan = directory / "model.plan"
    plan.write_bytes(b"serialized plan")
    sidecar = {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": "10.13.0.35",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "precision": "fp16",
        "input_name": "input",
        "profile": {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [32, 1, 8, 8]},
        "engine_sha256": hashlib.sha256(b"serialized plan").hexdigest(),
    }
    sidecar_path(plan).write_text(json.dumps(sidecar))
    return plan


def tensorrt_installed() -> bool:
    try:
        trt_backend.require_tensorrt()
    except BackendError:
        return False
    return True


class Constructed(Exception):
    """Raised by the stand-in TensorRTBackend with the arguments the factory passed."""


@pytest.mark.parametrize(("device", "index"), [("cuda", 0), ("auto", 0), ("cuda:1", 1)])
def test_the_factory_builds_tensorrt_backends_with_the_gpu_index_it_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, index: int
) -> None:
    plan = write_plan(tmp_path)
    real = inspect.signature(trt_backend.TensorRTBackend)

    def stand_in(*args: Any, **kwargs: Any) -> None:
        real.bind(*args, **kwargs)  # a TypeError here: the call does not fit the real constructor
        raise Constructed(args, kwargs)

    monkeypatch.setattr(trt_backend, "TensorRTBackend", stand_in)
    assert backend_for(plan, "auto") == "tensorrt"
    with pytest.raises(Constructed) as info:
        create_backend(plan, "tensorrt", device, intra_op_threads=1)
    assert info.value.args == ((plan,), {"device": index})


def test_a_device_that_names_no_gpu_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cuda:N"):
        create_backend(write_plan(tmp_path), "tensorrt", "gpu:one", intra_op_threads=1)


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed; the GPU tests cover loading")
def test_without_tensorrt_a_plan_fails_with_a_clear_backend_error(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    with pytest.raises(BackendError, match="needs TensorRT"):
        create_backend(plan, backend_for(plan, "auto"), "cuda", intra_op_threads=1)


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed; the GPU tests cover loading")
def test_without_tensorrt_the_server_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    config = ServerConfig(
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        models=(ModelSettings(name="engine", path=str(plan)),),
    )

    async def main() -> None:
        await InferenceServer(config).start()

    with pytest.raises(StartupError) as info:
        asyncio.run(main())
    message = str(info.value)
    assert "engine" in message and "needs TensorRT" in message and "\n" not in message


def test_a_runtime_missing_when_the_backend_builds_is_a_backend_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch_cuda imports torch only in create_backend: a serving image without torch fails there.
    def build(path: Path, device: str) -> None:
        raise ModuleNotFoundError("No module named 'cuda'", name="cuda")

    monkeypatch.setattr(trt_backend, "create_backend", build)
    with pytest.raises(BackendError, match="the tensorrt backend is not available here: No module named"):
        create_backend(write_plan(tmp_path), "tensorrt", "cuda", intra_op_threads=1)


def test_every_backend_the_repository_schema_accepts_has_a_module_that_exists() -> None:
    import importlib.util

    from resnet_serve.formats.repository import BACKENDS as NAMES
    from resnet_serve.runtime.factory import BACKENDS, EXTENSIONS

    assert tuple(BACKENDS) == NAMES
    assert set(EXTENSIONS.values()) <= set(NAMES)
    for module in BACKENDS.values():
        assert importlib.util.find_spec(module) is not None, module
