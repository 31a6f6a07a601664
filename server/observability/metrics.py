"""A server's metrics (`ServerMetrics`): one registry with the model versions' counters
(server/observability/model_metrics.py) exported under our names (exposition.py) and Triton's
(triton_metrics.py), the access refusals (refusals.py), the process and GPU collectors, and the /metrics
endpoint (metrics_http.py). Every `ServerMetrics` has its own `CollectorRegistry`, so tests and benchmarks can
build several side by side. Metric names, buckets and the mapping to Triton's names are in docs/metrics.md.

A server of several processes serves the totals of all of them from one: each exports its counts
(`export()`), and the one with /metrics is given the others' (`set_peers`) and adds them to its own at each
scrape (totals.py); `add_processes` exports every process's CPU and memory by role (processes.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from resnet_serve.server.observability.exposition import PREFIX, ModelsCollector, text_exposition
from resnet_serve.server.observability.metrics_http import MetricsHttpServer
from resnet_serve.server.observability.model_metrics import DisabledModelMetrics, ModelMetrics
from resnet_serve.server.observability.processes import ProcessesCollector, ProcessesSource
from resnet_serve.server.observability.refusals import AccessRefusals, check_refusal
from resnet_serve.server.observability.totals import MetricsTotals, PeerStates, ServerMetricsState, totals_of

# Asked at each scrape for the states of the server's other processes (blocking; see `set_peers`).
PeersSource = Callable[[], Sequence[ServerMetricsState]]

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
        self._refusals = AccessRefusals()
        self._peers: PeersSource | None = None
        self._peer_states = PeerStates()
        self._token = secrets.token_hex(4)
        self._seq = itertools.count(1)
        if not enabled:
            return
        self.registry.register(ModelsCollector(self))
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
        """Requests for models or versions not served; the server's total when it has peers."""
        return self._unknown if self._peers is None else self.totals().unknown

    def access_refused(self, protocol: str, group: str, reason: str, n: int = 1) -> None:
        """Count a request that access control refused. `group` is one of server/security/restrict.py's
        protocol group names (the caller's contract); `n=0` creates the series at 0 ahead of its first
        refusal, so rate() and increase() see that one too."""
        check_refusal(protocol, reason)
        if self.enabled:
            self._refusals.add(protocol, group, reason, n)

    def access_refusals(self) -> dict[tuple[str, str, str], int]:
        """Refusals so far by (protocol, group, reason); the server's totals when it has peers."""
        return self._refusals.counts() if self._peers is None else self.totals().refusals

    def export(self) -> ServerMetricsState:
        """Everything this process has counted, as picklable plain data, for the process that serves the
        server's totals (its `set_peers` source, or `totals(peers)`)."""
        return ServerMetricsState(
            origin=f"{os.getpid()}-{self._token}",
            seq=next(self._seq),
            models=[m.export() for m in self.models()],
            unknown=self._unknown,
            refusals=self._refusals.export(),
        )

    def set_peers(self, source: PeersSource | None) -> None:
        """Serve the totals of this process and its peers: from now on /metrics (our families and Triton's),
        `unknown_model_count`, `access_refusals()` and `totals()` add `source()`'s states (the other
        processes' `export()`) to this process's own counts. `source` blocks (it is called from the
        /metrics thread and from `totals()`); when it raises, the peers' last states are used. None: this
        process's counts only, again."""
        self._peers = source

    def totals(self, peers: Sequence[ServerMetricsState] | None = None) -> MetricsTotals:
        """This process's counts plus its peers': `peers` when given (states the caller gathered, say from
        async code: then nothing blocks), else the `set_peers` source's. Peers that reported before and are
        missing now count with their last state (`PeerStates`). The objects are new, except with no peers
        and no source: then they are this process's own, to be read only."""
        if peers is None:
            if self._peers is None:
                with self._lock:
                    models = dict(self._models)
                return MetricsTotals(models, self._unknown, self._refusals.counts())
            try:
                peers = self._peers()
            except Exception:
                log.warning("metrics of peer processes unavailable: using their last", exc_info=True)
                peers = []
        return totals_of([self.export(), *self._peer_states.update(peers)])

    def add_processes(self, source: ProcessesSource) -> None:
        """Export the CPU time and resident memory of the processes `source()` names, as (role, pid) pairs,
        at each scrape (`resnet_serve_process_*{role, pid}`, processes.py)."""
        if self.enabled:
            self.registry.register(ProcessesCollector(PREFIX, source))

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
