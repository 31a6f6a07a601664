"""Prometheus metrics and Triton-style model statistics, updated by the same call so they always agree.

The batcher and the services report each finished request (`ModelMetrics.request_done`) and each executed
batch (`ModelMetrics.batch_executed`); this module turns them into Prometheus series (served on their own
port) and into the cumulative counts and nanoseconds that the KServe `ModelStatistics` RPC returns.

Every `ServerMetrics` has its own `CollectorRegistry`, so tests and benchmarks can build several side by
side. Label children are resolved once per model, so a request costs a few lock-protected additions and no
label lookups. The metric names, buckets and the mapping to Triton's `nv_inference_*` names are documented
in docs/metrics.md.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

log = logging.getLogger(__name__)

PREFIX: Final = "resnet_serve"

# Outcomes a request can end with; `not_found` is only reported through `ServerMetrics.unknown_model`.
SUCCESS: Final = "success"
FAILURE_OUTCOMES: Final = (
    "invalid_input",
    "queue_full",
    "deadline_exceeded",
    "cancelled",
    "backend_error",
)
NOT_FOUND: Final = "not_found"
OUTCOMES: Final = (SUCCESS, *FAILURE_OUTCOMES)

# Requests for models that are not served share one label pair: using the requested name as a label
# would let any client create unbounded series.
UNKNOWN_MODEL_LABEL: Final = "_unknown"

# Inference on this server takes from a fraction of a millisecond (a small ResNet on a GPU) to a few
# hundred milliseconds (a big batch on 2 CPU cores), so the buckets are dense in 0.5-50 ms and sparse above.
LATENCY_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Every power of two plus the midpoints between them, so a max_batch_size of 6, 12, 24 ... has its own bucket.
BATCH_SIZE_BUCKETS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)

_NS_PER_S: Final = 1_000_000_000


@dataclass(frozen=True)
class StatDuration:
    """A count and the cumulative duration of those events, as Triton's StatisticDuration."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchStatistics:
    """Executions of one batch size, as Triton's InferBatchStatistics."""

    batch_size: int
    compute_input: StatDuration
    compute_infer: StatDuration
    compute_output: StatDuration


@dataclass(frozen=True)
class ModelStatistics:
    """A consistent snapshot of one model version's cumulative statistics (Triton's ModelStatistics).

    Phase durations (queue, compute_input = preprocessing, compute_infer) cover successful requests only,
    as in Triton; compute_output is not measured separately (postprocessing is part of `success`).
    """

    name: str
    version: str
    last_inference_ms: int  # Unix time of the last finished request in ms; 0 if none yet
    inference_count: int  # inferences in successful requests (a batch request of n counts n)
    execution_count: int  # batches executed
    success: StatDuration
    fail: StatDuration
    queue: StatDuration
    compute_input: StatDuration
    compute_infer: StatDuration
    compute_output: StatDuration
    failures: dict[str, int]  # failed requests by outcome
    batch_stats: tuple[BatchStatistics, ...]  # ascending batch size


class _Phase:
    """A plain count and nanosecond sum, updated under the owning ModelMetrics' lock."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * _NS_PER_S)

    def snapshot(self) -> StatDuration:
        return StatDuration(self.count, self.ns)


class _InFlight(AbstractContextManager[None]):
    """Stateless, so one instance serves every request and `in_flight()` allocates nothing."""

    __slots__ = ("_gauge",)

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge

    def __enter__(self) -> None:
        self._gauge.inc()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._gauge.dec()


class _Nothing(AbstractContextManager[None]):
    __slots__ = ()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_NOTHING: Final = _Nothing()


class _Families:
    """The metric families of one registry; ModelMetrics holds their per-model children."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "version")

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, labels, registry=registry, buckets=LATENCY_BUCKETS_S)

        self.request = histogram(
            "request_duration_seconds", "End-to-end time of successful requests, arrival to response."
        )
        self.queue = histogram(
            "queue_duration_seconds", "Time successful requests waited in the batcher's queue."
        )
        self.preprocess = histogram(
            "preprocess_duration_seconds",
            "Time successful requests spent decoding and preprocessing their input.",
        )
        self.compute = histogram(
            "compute_duration_seconds",
            "Backend execution time of the batch each successful request was computed in.",
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Number of inferences in each executed batch.",
            labels,
            registry=registry,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Finished requests by outcome (success or the failure reason).",
            (*labels, "outcome"),
            registry=registry,
        )
        self.failed_duration = Counter(
            f"{PREFIX}_failed_request_duration_seconds",
            "Cumulative end-to-end time of failed requests.",
            labels,
            registry=registry,
        )
        self.inferences = Counter(
            f"{PREFIX}_inferences",
            "Inferences in successful requests (a request of n images counts n).",
            labels,
            registry=registry,
        )
        self.executions = Counter(
            f"{PREFIX}_executions",
            "Batches executed by the backend; inferences / executions is the average batch size.",
            labels,
            registry=registry,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Requests waiting in the batcher's queue.", labels, registry=registry
        )
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight",
            "Requests received and not yet answered.",
            labels,
            registry=registry,
        )
        self.ready = Gauge(
            f"{PREFIX}_model_ready", "1 when the model version is ready to serve, else 0.", labels,
            registry=registry,
        )  # fmt: skip
        self.load_time = Gauge(
            f"{PREFIX}_model_load_duration_seconds",
            "Time the model version took to load and warm up.",
            labels,
            registry=registry,
        )


class ModelMetrics:
    """Metrics of one model version. Thread-safe: called from gRPC handlers and batcher workers."""

    def __init__(self, name: str, version: str, families: _Families) -> None:
        self.name = name
        self.version = version
        lv = (name, version)
        self._h_request = families.request.labels(*lv)
        self._h_queue = families.queue.labels(*lv)
        self._h_preprocess = families.preprocess.labels(*lv)
        self._h_compute = families.compute.labels(*lv)
        self._h_batch = families.batch_size.labels(*lv)
        # Every outcome's child exists from the start, so each series reads 0 before its first event and
        # rate()/increase() see the first one.
        self._c_outcome = {o: families.requests.labels(name, version, o) for o in OUTCOMES}
        self._c_failed_s = families.failed_duration.labels(*lv)
        self._c_inferences = families.inferences.labels(*lv)
        self._c_executions = families.executions.labels(*lv)
        self._g_queue_depth = families.queue_depth.labels(*lv)
        self._g_ready = families.ready.labels(*lv)
        self._g_load = families.load_time.labels(*lv)
        self._in_flight = _InFlight(families.in_flight.labels(*lv))
        self._init_statistics()

    def _init_statistics(self) -> None:
        self._lock = threading.Lock()
        self._success = _Phase()
        self._fail = _Phase()
        self._queue = _Phase()
        self._compute_input = _Phase()
        self._compute_infer = _Phase()
        self._failures = dict.fromkeys(FAILURE_OUTCOMES, 0)
        self._inference_count = 0
        self._execution_count = 0
        self._last_inference_ms = 0
        self._batches: dict[int, _Phase] = {}

    def request_done(
        self,
        outcome: str,
        total_s: float,
        queue_s: float | None = None,
        preprocess_s: float | None = None,
        compute_s: float | None = None,
        inferences: int = 1,
    ) -> None:
        """Record one finished request. Phases that did not happen (or were not measured) are None."""
        counter = self._c_outcome.get(outcome)
        if counter is None:
            raise ValueError(f"unknown request outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
        now_ms = int(time.time() * 1000)
        with self._lock:
            self._last_inference_ms = now_ms
            if outcome == SUCCESS:
                self._success.add(total_s)
                self._inference_count += inferences
                if queue_s is not None:
                    self._queue.add(queue_s)
                if preprocess_s is not None:
                    self._compute_input.add(preprocess_s)
                if compute_s is not None:
                    self._compute_infer.add(compute_s)
            else:
                self._fail.add(total_s)
                self._failures[outcome] += 1
        counter.inc()
        if outcome == SUCCESS:
            self._h_request.observe(total_s)
            self._c_inferences.inc(inferences)
            if queue_s is not None:
                self._h_queue.observe(queue_s)
            if preprocess_s is not None:
                self._h_preprocess.observe(preprocess_s)
            if compute_s is not None:
                self._h_compute.observe(compute_s)
        else:
            self._c_failed_s.inc(total_s)

    def batch_executed(self, batch_size: int, compute_s: float) -> None:
        """Record one successful backend execution of `batch_size` inferences."""
        with self._lock:
            self._execution_count += 1
            phase = self._batches.get(batch_size)
            if phase is None:
                phase = self._batches[batch_size] = _Phase()
            phase.add(compute_s)
        self._c_executions.inc()
        self._h_batch.observe(batch_size)

    def set_queue_depth(self, n: int) -> None:
        self._g_queue_depth.set(n)

    def in_flight(self) -> AbstractContextManager[None]:
        return self._in_flight

    def set_ready(self, ready: bool) -> None:
        self._g_ready.set(1 if ready else 0)

    def set_load_time(self, seconds: float) -> None:
        self._g_load.set(seconds)

    def statistics(self) -> ModelStatistics:
        zero = StatDuration()
        with self._lock:
            return ModelStatistics(
                name=self.name,
                version=self.version,
                last_inference_ms=self._last_inference_ms,
                inference_count=self._inference_count,
                execution_count=self._execution_count,
                success=self._success.snapshot(),
                fail=self._fail.snapshot(),
                queue=self._queue.snapshot(),
                compute_input=self._compute_input.snapshot(),
                compute_infer=self._compute_infer.snapshot(),
                compute_output=zero,
                failures=dict(self._failures),
                batch_stats=tuple(
                    BatchStatistics(size, zero, phase.snapshot(), zero)
                    for size, phase in sorted(self._batches.items())
                ),
            )


def _ignore(*args: object, **kwargs: object) -> None:
    return None


class _DisabledModelMetrics(ModelMetrics):
    """What `ServerMetrics(enabled=False)` hands out: every method returns at once."""

    def __init__(self, name: str, version: str) -> None:  # no super(): there are no families to label
        self.name = name
        self.version = version
        self._init_statistics()

    request_done = batch_executed = set_queue_depth = set_ready = set_load_time = _ignore

    def in_flight(self) -> AbstractContextManager[None]:
        return _NOTHING


class ServerMetrics:
    """All of one server's metrics, in one registry, optionally served over HTTP for Prometheus."""

    def __init__(self, registry: CollectorRegistry | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = registry if registry is not None else CollectorRegistry()
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        self._lock = threading.Lock()
        self._http: list[tuple[object, threading.Thread]] = []
        self._unknown = 0
        if not enabled:
            return
        self._families = _Families(self.registry)
        self._c_not_found = self._families.requests.labels(
            UNKNOWN_MODEL_LABEL, UNKNOWN_MODEL_LABEL, NOT_FOUND
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        from server.gpu_metrics import register_gpu_collector

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
                found = (
                    ModelMetrics(name, version, self._families)
                    if self.enabled
                    else _DisabledModelMetrics(name, version)
                )
                self._models[key] = found
            return found

    def models(self) -> list[ModelMetrics]:
        with self._lock:
            return list(self._models.values())

    def unknown_model(self, requested: str) -> None:
        """Count a request for a model or version this server does not serve (outcome `not_found`)."""
        if not self.enabled:
            return
        with self._lock:
            self._unknown += 1
        self._c_not_found.inc()
        log.debug("request for unknown model %.200r", requested)

    @property
    def unknown_model_count(self) -> int:
        return self._unknown

    def render(self) -> bytes:
        """The text exposition Prometheus would scrape, for tests and in-process inspection."""
        return generate_latest(self.registry)

    def start_http_server(self, host: str, port: int) -> int:
        """Serve /metrics on host:port from a daemon thread; port 0 picks a free port. Returns the port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http.append((server, thread))
        bound: int = server.server_port
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop_http_server(self) -> None:
        for server, thread in self._http:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            thread.join(timeout=5)
        self._http.clear()
