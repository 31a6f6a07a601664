"""The NVML collector: one series per GPU when there is one, nothing (and no error) when there is not."""

from __future__ import annotations

import types
from typing import Any

from prometheus_client import CollectorRegistry

from resnet_serve.server.observability.gpu import register_gpu_collector


class FakeNVMLError(Exception):
    pass


def fake_nvml(devices: int, power_supported: bool = True, init_fails: bool = False) -> types.ModuleType:
    """The slice of pynvml the collector uses, with two readings that change between calls."""
    nvml = types.ModuleType("fake_pynvml")
    calls = {"util": 0}

    def utilisation(handle: int) -> Any:
        calls["util"] += 1
        return types.SimpleNamespace(gpu=40 + handle + calls["util"], memory=10)

    def power(handle: int) -> int:
        if not power_supported:
            raise FakeNVMLError("Not Supported")
        return 150_000  # milliwatts

    def init() -> None:
        if init_fails:
            raise FakeNVMLError("Driver Not Loaded")

    nvml.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: devices  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}".encode()  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: "NVIDIA H100"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = utilisation  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=(h + 1) * 2**30, total=80 * 2**30, free=0
    )
    nvml.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    return nvml


def gpu(index: int) -> dict[str, str]:
    return {"gpu": str(index), "uuid": f"GPU-{index:04d}", "name": "NVIDIA H100"}


def test_each_gpu_gets_utilisation_memory_and_power_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    assert register_gpu_collector(registry, fake_nvml(devices=2)) is not None
    first = registry.get_sample_value("resnet_serve_gpu_utilization_ratio", gpu(1))
    second = registry.get_sample_value("resnet_serve_gpu_utilization_ratio", gpu(1))
    assert first is not None and second is not None and 0 < first < second <= 1
    assert registry.get_sample_value("resnet_serve_gpu_memory_used_bytes", gpu(1)) == 2 * 2**30
    assert registry.get_sample_value("resnet_serve_gpu_memory_total_bytes", gpu(0)) == 80 * 2**30
    assert registry.get_sample_value("resnet_serve_gpu_power_watts", gpu(0)) == 150.0


def test_an_unsupported_reading_drops_only_that_sample() -> None:
    registry = CollectorRegistry()
    register_gpu_collector(registry, fake_nvml(devices=1, power_supported=False))
    assert registry.get_sample_value("resnet_serve_gpu_power_watts", gpu(0)) is None
    assert registry.get_sample_value("resnet_serve_gpu_memory_used_bytes", gpu(0)) == 2**30


def test_no_gpu_means_no_collector_and_no_series() -> None:
    for nvml in (fake_nvml(devices=0), fake_nvml(devices=1, init_fails=True)):
        registry = CollectorRegistry()
        assert register_gpu_collector(registry, nvml) is None
        assert list(registry.collect()) == []
