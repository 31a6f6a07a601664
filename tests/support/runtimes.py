"""The backend contract and the server tests run against every CPU runtime installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from resnet_serve.runtime.base import Backend

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
