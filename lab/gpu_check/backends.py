"""Which backends can run a model on this node, each as a Candidate that builds it and says how the server
would run it; the rest are listed with the reason. A dry run adds CPU stand-ins on the same code paths."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.gpu_check.environment import tensorrt_usable
from lab.gpu_check.model import Model


@dataclass
class Candidate:
    backend: str  # e.g. "torch-cuda", "ort-cuda", "tensorrt"
    precision: str
    make: Callable[[], Any]  # -> resnet_serve.runtime.base.Backend
    server_args: list[str] | None = None  # how `resnet-serve serve` runs this backend, None: not served


def candidates(
    model: Model, env: dict[str, Any], work: Path, dry_run: bool
) -> tuple[list[Candidate], list[str]]:
    from resnet_serve.runtime.onnxruntime import OrtBackend, OrtOptions

    found: list[Candidate] = []
    skipped: list[str] = []
    gpu = bool(env.get("cuda_available"))
    if gpu:
        from resnet_serve.runtime.torch_cuda import TorchCudaBackend, TorchOptions

        for dtype in ("fp32", "fp16", "bf16"):
            found.append(
                Candidate(
                    "torch-cuda",
                    dtype,
                    functools.partial(
                        TorchCudaBackend, model.checkpoint, TorchOptions(dtype=dtype, max_batch_size=128)
                    ),
                    ["--backend", "torch", "--device", "cuda"] if dtype == "fp16" else None,
                )
            )
    else:
        skipped.append("torch-cuda: no CUDA GPU visible to PyTorch")
    providers = env.get("ort_providers", [])
    onnx32 = model.onnx.get("fp32")
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if onnx32 is None:
            skipped.append(f"ort-{device}: no ONNX model (export failed)")
        elif provider in providers:
            found.append(
                Candidate(
                    f"ort-{device}",
                    "fp32",
                    functools.partial(OrtBackend, onnx32, OrtOptions(device=device)),
                    ["--backend", "onnxruntime", "--device", device],
                )
            )
        else:
            skipped.append(f"ort-{device}: onnxruntime offers no {provider} (CPU-only onnxruntime)")
    if tensorrt_usable(env):
        found.extend(tensorrt_candidates(model, work))
    else:
        skipped.append(
            f"tensorrt: TensorRT {env['tensorrt']}, cuda-python {env['cuda_python']}, "
            f"GPU {'yes' if gpu else 'no'}"
        )
    if dry_run:
        from resnet_serve.runtime.torch_cuda import TorchCudaBackend, TorchOptions

        # CPU stand-ins that walk the same code paths as the GPU backends.
        found.append(
            Candidate(
                "torch-cpu",
                "fp32",
                lambda: TorchCudaBackend(
                    model.checkpoint, TorchOptions(dtype="fp32", device="cpu", max_batch_size=32)
                ),
                ["--backend", "torch", "--device", "cpu"],
            )
        )
        if onnx32 is not None:
            found.append(
                Candidate(
                    "ort-cpu",
                    "fp32",
                    lambda: OrtBackend(onnx32, OrtOptions(device="cpu")),
                    ["--backend", "onnxruntime", "--device", "cpu"],
                )
            )
        onnx16 = model.onnx.get("fp16")
        if onnx16 is not None:  # exercises the reduced-precision verdicts
            found.append(Candidate("ort-cpu", "fp16", lambda: OrtBackend(onnx16, OrtOptions(device="cpu"))))
    return found, skipped


def tensorrt_candidates(model: Model, work: Path) -> list[Candidate]:
    from resnet_serve.export.engine import BatchProfile, BuildRequest, build
    from resnet_serve.runtime.tensorrt import TensorRTBackend

    out = []
    for precision, onnx_path in model.onnx.items():
        plan = work / f"{model.name}.{precision}.plan"

        def make(onnx_path: Path = onnx_path, plan: Path = plan) -> Any:
            if not plan.is_file():
                build(
                    BuildRequest(
                        onnx_path, plan, BatchProfile(1, 32, 128), timing_cache=work / "timing.cache"
                    ),
                    progress=False,
                )
            return TensorRTBackend(plan)

        out.append(Candidate("tensorrt", precision, make, ["--backend", "tensorrt", "--device", "cuda"]))
    return out
