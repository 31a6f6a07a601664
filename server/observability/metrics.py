"""A server's metrics (`ServerMetrics`): one registry with the model versions' counters
(server/observability/model_metrics.py) exported under our names (exposition.py) and Triton's
(triton_metrics.py), the access refusals (refusals.py), the process and GPU collectors, and the /metrics
endpoint (metrics_http.py). Every `ServerMetrics` has its own `CollectorRegistry`, so tests and benchmarks can
build several side by side. Metric names, buckets and the mapping to Triton's names are in docs/metrics.md.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from resnet_serve.server.observability.exposition import PREFIX, ModelsCollector, text_exposition
from resnet_serve.server.observability.metrics_http import MetricsHttpServer
from resnet_serve.server.observability.model_metrics import DisabledModelMetrics, ModelMetrics
from resnet_serve.server.observability.refusals import AccessRefusals, check_refusal

log = logging.getLogger(__name__)


class ServerMetrics:
    """All of one server's metrics, in one registry, optionally served over HTTP for Prometheus.
    `triton_names` adds Triton's `nv_inference_*` families (built at scrape time only)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, enabled: bool = True, triton_names: bool = True
    ) -> None:
        self.enabled = enabled
        self.triton_names = triton_names
        self.registry = registry if registry is not None else CollectorRegistry()
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        self._lock = threading.Lock()
        self._http: list[MetricsHttpServer] = []
        self._unknown = 0
        self._refusals = AccessRefusals(PREFIX)
        if not enabled:
            return
        self.registry.register(ModelsCollector(self))
        self.registry.register(self._refusals)
        for collector in (ProcessCollector, PlatformCollector):
            try:
                collector(registry=self.registry)
            except ValueError:  # a shared registry (prometheus_client.REGISTRY, say) already has them
                log.debug("%s already registered", collector.__name__)
        from resnet_serve.server.observability.gpu import register_gpu_collector

        register_gpu_collector(self.registry)

    def model(self, name: str, version: str) -> ModelMetrics:
        """The metrics of one model version; the same object for every call with the same name/version."""
        key = (name, version)
        found = self._models.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._models.get(key)
            if found is None:
                found = (ModelMetrics if self.enabled else DisabledModelMetrics)(name, version)
                self._models[key] = found
            return found

    def forget(self, name: str, version: str) -> None:
        """Drop one model version's series (a placeholder that no longer stands for anything)."""
        with self._lock:
            self._models.pop((name, version), None)

    def models(self) -> list[ModelMetrics]:
        with self._lock:
            return list(self._models.values())

    def unknown_model(self, requested: str) -> None:
        """Count a request for a model or version this server does not serve (outcome `not_found`)."""
        if not self.enabled:
            return
        with self._lock:
            self._unknown += 1
        log.debug("request for unknown model %.200r", requested)

    @property
    def unknown_model_count(self) -> int:
        return self._unknown

    def access_refused(self, protocol: str, group: str, reason: str, n: int = 1) -> None:
        """Count a request that access control refused. `group` is one of server/security/restrict.py's
        protocol group names (the caller's contract); `n=0` creates the series at 0 ahead of its first
        refusal, so rate() and increase() see that one too."""
        check_refusal(protocol, reason)
        if self.enabled:
            self._refusals.add(protocol, group, reason, n)

    def access_refusals(self) -> dict[tuple[str, str, str], int]:
        """Refusals so far by (protocol, group, reason)."""
        return self._refusals.counts()

    def render(self) -> bytes:
        """The text exposition Prometheus would scrape, for tests and in-process inspection."""
        return text_exposition(self.registry)

    def start_http_server(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (server/observability/metrics_http.py); port 0 picks a free port.
        Returns the port."""
        http = MetricsHttpServer(self.registry, host, port)
        self._http.append(http)
        return http.port

    def stop_http_server(self) -> None:
        for http in self._http:
            http.stop()
        self._http.clear()
