"""GPU utilisation, memory and power through NVML, read at scrape time.

Optional by design: without nvidia-ml-py, without a driver or without a GPU, `register_gpu_collector`
registers nothing and the server exports no GPU series (no error, one DEBUG line). A device query that
fails at scrape time drops that one sample rather than failing the whole scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX: Final = "resnet_serve_gpu"
_LABELS: Final = ("gpu", "uuid", "name")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_metric_families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
]:
    """Fresh, empty families of every GPU metric (the collector fills them per scrape)."""
    return (
        GaugeMetricFamily(
            f"{PREFIX}_utilization_ratio",
            "Fraction of the last sample period the GPU was executing kernels (NVML).",
            labels=_LABELS,
        ),
        GaugeMetricFamily(f"{PREFIX}_memory_used_bytes", "GPU memory in use (NVML).", labels=_LABELS),
        GaugeMetricFamily(f"{PREFIX}_memory_total_bytes", "GPU memory installed (NVML).", labels=_LABELS),
        GaugeMetricFamily(f"{PREFIX}_power_watts", "GPU power draw (NVML).", labels=_LABELS),
    )


class NvmlCollector(Collector):
    """One gauge family per quantity, one series per device, read fresh on every scrape."""

    def __init__(self, nvml: ModuleType) -> None:
        self._nvml = nvml
        self._devices: list[tuple[Any, tuple[str, str, str]]] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            labels = (
                str(index),
                _text(nvml.nvmlDeviceGetUUID(handle)),
                _text(nvml.nvmlDeviceGetName(handle)),
            )
            self._devices.append((handle, labels))

    @property
    def device_count(self) -> int:
        return len(self._devices)

    def describe(self) -> list[Metric]:
        return list(gpu_metric_families())

    def collect(self) -> Iterator[Metric]:
        util, used, total, power = gpu_metric_families()
        for handle, labels in self._devices:
            self._sample(
                util, labels, lambda h: self._nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0, handle
            )
            self._sample(used, labels, lambda h: float(self._nvml.nvmlDeviceGetMemoryInfo(h).used), handle)
            self._sample(total, labels, lambda h: float(self._nvml.nvmlDeviceGetMemoryInfo(h).total), handle)
            self._sample(power, labels, lambda h: self._nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, handle)
        yield from (util, used, total, power)

    def _sample(
        self, family: GaugeMetricFamily, labels: tuple[str, str, str], read: Any, handle: Any
    ) -> None:
        try:
            family.add_metric(labels, read(handle))
        except self._nvml.NVMLError as exc:  # e.g. power readings unsupported on this board
            log.debug("NVML query for %s failed on gpu %s: %s", family.name, labels[0], exc)


def _import_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        log.debug("nvidia-ml-py is not installed: no GPU metrics")
        return None
    module: ModuleType = pynvml
    return module


def register_gpu_collector(
    registry: CollectorRegistry, nvml: ModuleType | None = None
) -> NvmlCollector | None:
    """Register the NVML collector on `registry` if there is at least one GPU; return it, or None.

    `nvml` stands in for the pynvml module (tests pass a fake).
    """
    nvml = nvml if nvml is not None else _import_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
        collector = NvmlCollector(nvml)
    except nvml.NVMLError as exc:
        log.debug("NVML unavailable (%s): no GPU metrics", exc)
        return None
    if collector.device_count == 0:
        return None
    registry.register(collector)
    log.info("GPU metrics for %d device(s)", collector.device_count)
    return collector
