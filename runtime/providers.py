"""Which ONNX Runtime execution providers a model runs on: CPU, CUDA or the TensorRT EP.

The ORT backend calls `ort_providers(requested)` and hands the result to `InferenceSession(providers=...)`.
A provider that the installed onnxruntime does not offer is an error here, not a silent CPU fallback:
ORT itself only warns and quietly runs on CPU, which would make a GPU deployment look healthy while it
serves at CPU speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resnet_serve.runtime.base import BackendError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# The names users type (CLI flags, model config) and the ORT providers each one asks for, best first.
# CPU is always last so ORT has somewhere to put the nodes a GPU provider rejects.
CHOICES: dict[str, tuple[str, ...]] = {
    "cpu": (CPU,),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
}
AUTO = "auto"

_INSTALL_HINT = {
    CUDA: "install onnxruntime-gpu (it replaces the CPU-only onnxruntime package) and the CUDA runtime",
    TENSORRT: "install onnxruntime-gpu and TensorRT's libraries (libnvinfer) where onnxruntime can load them",
}

ProviderSpec = str | tuple[str, dict[str, Any]]


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def ort_providers(
    requested: str,
    available: Sequence[str] | None = None,
    *,
    trt_cache_dir: str | None = None,
    trt_fp16: bool = False,
) -> list[ProviderSpec]:
    """The providers list for `onnxruntime.InferenceSession` for a requested device.

    `requested` is "cpu", "cuda", "tensorrt" or "auto" (the best the installed onnxruntime offers).
    `available` defaults to `onnxruntime.get_available_providers()`; tests pass it explicitly.
    The TensorRT EP caches its engines in `trt_cache_dir` when given, because building them takes
    minutes and would otherwise happen on every server start.
    """
    offered = list(available) if available is not None else available_providers()
    key = requested.strip().lower()
    if key == AUTO:
        key = next(
            (name for name in ("tensorrt", "cuda") if CHOICES[name][0] in offered),
            "cpu",
        )
    if key not in CHOICES:
        choices = ", ".join([*CHOICES, AUTO])
        raise BackendError(f"unknown execution provider {requested!r}; choose one of: {choices}")
    wanted = CHOICES[key]
    missing = [p for p in wanted[:1] if p not in offered]
    if missing:
        hint = _INSTALL_HINT.get(missing[0], "")
        raise BackendError(
            f"execution provider {key!r} needs {missing[0]}, but this onnxruntime offers only "
            f"{', '.join(offered) or 'nothing'}" + (f"; {hint}" if hint else "")
        )
    specs: list[ProviderSpec] = []
    for name in wanted:
        if name not in offered:
            continue  # a fallback layer that is absent (e.g. CUDA under TensorRT) is not an error
        if name == TENSORRT:
            specs.append((name, _tensorrt_options(trt_cache_dir, trt_fp16)))
        else:
            specs.append(name)
    return specs


def _tensorrt_options(cache_dir: str | None, fp16: bool) -> dict[str, Any]:
    # Only when asked: the EP implements it with BuilderFlag.FP16, which TensorRT 11 removed.
    options: dict[str, Any] = {"trt_fp16_enable": True} if fp16 else {}
    if cache_dir:
        options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=cache_dir,
            trt_timing_cache_enable=True,
            trt_timing_cache_path=cache_dir,
        )
    return options


def provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def provider_options(spec: ProviderSpec) -> dict[str, Any]:
    return {} if isinstance(spec, str) else spec[1]


def device_of(specs: Sequence[ProviderSpec]) -> str:
    """The device name a backend reports for the first (preferred) provider: "cpu" or "cuda"."""
    return "cpu" if provider_name(specs[0]) == CPU else "cuda"


def cuda_index(device: str) -> int:
    """The CUDA device a GPU-only backend (TensorRT, PyTorch) uses for the server's `device` setting.

    That setting names ORT providers ("cpu", "cuda", "tensorrt", "auto"); a GPU-only backend has no CPU
    mode, so any of those means GPU 0, and only "cuda:N" picks another GPU."""
    name, _, index = device.strip().lower().partition(":")
    if not index:
        return 0
    if name != "cuda" or not index.isdigit():
        raise BackendError(f"cannot read device {device!r}: expected cuda:N (e.g. cuda:1)")
    return int(index)
