"""What is installed on this node: GPU, driver, torch/CUDA, TensorRT, onnxruntime providers and the rest.

Every probe answers "absent (...)" rather than failing: the check runs on bare GPU images too.
"""

from __future__ import annotations

import importlib
import platform
import subprocess
import sys
from typing import Any


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as err:
        return f"absent ({type(err).__name__})"
    return str(getattr(mod, "__version__", "present"))


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        env["nvidia_smi"] = smi.splitlines()
    except (OSError, subprocess.SubprocessError) as err:
        env["nvidia_smi"] = f"unavailable ({type(err).__name__})"
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError:
        env["torch"] = "absent"
        env["cuda_available"] = False
    try:
        import tensorrt  # type: ignore[import-untyped]

        env["tensorrt"] = getattr(tensorrt, "__version__", "stubs only (not usable)")
    except ImportError:
        env["tensorrt"] = "absent"
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["ort_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        env["onnxruntime"] = "absent"
        env["ort_providers"] = []
    for name, module in (
        ("onnx", "onnx"),
        ("onnxscript", "onnxscript"),
        ("cuda_python", "cuda.bindings"),
        ("sklearn", "sklearn"),
        ("grpcio", "grpc"),
        ("grpc_health", "grpc_health.v1"),
    ):
        env[name] = _version(module)
    return env


def tensorrt_usable(env: dict[str, Any]) -> bool:
    return (
        env.get("cuda_available", False)
        and env["tensorrt"][0].isdigit()
        and "absent" not in env["cuda_python"]
    )
