"""Execution-provider selection for the ONNX Runtime backend (no GPU needed: `available` is passed in)."""

from __future__ import annotations

import pytest

from resnet_serve.runtime.base import BackendError
from resnet_serve.runtime.providers import (
    CPU,
    CUDA,
    TENSORRT,
    cuda_index,
    device_of,
    ort_providers,
    provider_name,
    provider_options,
)

CPU_ONLY = [CPU]
GPU_BUILD = [TENSORRT, CUDA, CPU]


def test_cpu_is_always_available() -> None:
    assert ort_providers("cpu", CPU_ONLY) == [CPU]


def test_cuda_keeps_cpu_as_fallback_for_rejected_nodes() -> None:
    assert ort_providers("cuda", GPU_BUILD) == [CUDA, CPU]


def test_tensorrt_stacks_cuda_then_cpu_and_sets_the_engine_cache() -> None:
    specs = ort_providers("TensorRT", GPU_BUILD, trt_cache_dir="/cache")
    assert [provider_name(s) for s in specs] == [TENSORRT, CUDA, CPU]
    options = provider_options(specs[0])
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == "/cache"
    assert "trt_fp16_enable" not in options


def test_tensorrt_fp16_only_when_asked() -> None:
    spec = ort_providers("tensorrt", GPU_BUILD, trt_fp16=True)[0]
    assert provider_options(spec) == {"trt_fp16_enable": True}


@pytest.mark.parametrize("requested", ["cuda", "tensorrt"])
def test_missing_gpu_provider_is_a_clear_error_not_a_cpu_fallback(requested: str) -> None:
    with pytest.raises(BackendError, match=r"onnxruntime-gpu") as err:
        ort_providers(requested, CPU_ONLY)
    assert "CPUExecutionProvider" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_provider_lists_the_choices() -> None:
    with pytest.raises(BackendError, match="choose one of: cpu, cuda, tensorrt, auto"):
        ort_providers("rocm", GPU_BUILD)


@pytest.mark.parametrize(
    ("available", "first"),
    [(GPU_BUILD, TENSORRT), ([CUDA, CPU], CUDA), (CPU_ONLY, CPU)],
)
def test_auto_picks_the_best_offered(available: list[str], first: str) -> None:
    assert provider_name(ort_providers("auto", available)[0]) == first


def test_tensorrt_without_cuda_provider_still_works() -> None:
    specs = ort_providers("tensorrt", [TENSORRT, CPU])
    assert [provider_name(s) for s in specs] == [TENSORRT, CPU]


def test_device_follows_the_preferred_provider() -> None:
    assert device_of(ort_providers("cpu", GPU_BUILD)) == "cpu"
    assert device_of(ort_providers("tensorrt", GPU_BUILD)) == "cuda"


def test_defaults_to_what_the_installed_onnxruntime_offers() -> None:
    import onnxruntime

    assert ort_providers("cpu") == [CPU]
    if CUDA not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError):
            ort_providers("cuda")


@pytest.mark.parametrize(
    ("device", "index"), [("cpu", 0), ("auto", 0), ("cuda", 0), ("cuda:3", 3), ("CUDA:1", 1)]
)
def test_gpu_backends_read_the_device_index(device: str, index: int) -> None:
    assert cuda_index(device) == index


@pytest.mark.parametrize("device", ["cuda:x", "rocm:0", "cuda:-1"])
def test_unreadable_device_is_a_clear_error(device: str) -> None:
    with pytest.raises(BackendError, match="expected cuda:N"):
        cuda_index(device)
