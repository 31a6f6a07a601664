"""Prometheus metrics and Triton-style model statistics, from one set of counters so they always agree.

The batcher and the services report each finished request (`ModelMetrics.request_done`) and each executed
batch (`ModelMetrics.batch_executed`). Those calls only add to plain Python counters under one lock per
model version; a custom collector turns the counters into Prometheus histograms, counters and gauges when
/metrics is scraped, and `statistics()` turns the same counters into the cumulative counts and nanoseconds
of the KServe `ModelStatistics` RPC. One source for both means they cannot drift apart, and a request
costs about a microsecond instead of a dozen lock round trips through prometheus_client's metric objects.

Every `ServerMetrics` has its own `CollectorRegistry`, so tests and benchmarks can build several side by
side. The same counters are also exported under Triton's `nv_inference_*` names and labels (on by default:
they are built at scrape time, so a request costs nothing more). Metric names, buckets and the mapping to
Triton's names are in docs/metrics.md.
"""

from __future__ import annotations

import bisect
import gzip
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import gzip_accepted
from prometheus_client.registry import Collector

from resnet_serve.server.outcomes import FAILURES, REQUEST_OUTCOMES, Outcome

log = logging.getLogger(__name__)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds shutdown


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no line per scrape on stderr
        pass


PREFIX: Final = "resnet_serve"

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

# Requests refused by access control (docs/security.md), by front end, protocol group and why. Every label
# value comes from these closed sets or from server/security/restrict.py's group names, never from a request:
# no header value, token or path can create a series.
ACCESS_PROTOCOLS: Final = ("grpc", "http")
ACCESS_REFUSAL_REASONS: Final = (
    "restricted",  # a restricted protocol group without its header value: UNAVAILABLE, as Triton
    "unauthenticated",  # the image API without a valid bearer token: UNAUTHENTICATED (HTTP 401)
    "model_control",  # load/unload under --model-control-mode none: UNAVAILABLE, as Triton
)

# Triton's `reason` label of nv_inference_request_failure (Triton 2.4x: REJECTED for a full queue or an
# expired queue timeout, CANCELED, BACKEND for a failed execution, OTHER) for each of our failure outcomes.
TRITON_FAILURE_REASONS: Final = {
    Outcome.QUEUE_FULL: "REJECTED",
    Outcome.DEADLINE_EXCEEDED: "REJECTED",
    Outcome.CANCELLED: "CANCELED",
    Outcome.BACKEND_ERROR: "BACKEND",
    Outcome.INVALID_INPUT: "OTHER",
    Outcome.UNAVAILABLE: "OTHER",
}


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


class _Histogram:
    """Per-bucket counts and a nanosecond sum; cumulated into Prometheus' `le` buckets only when scraped."""

    __slots__ = ("bounds", "count", "counts", "le", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.le = [repr(float(b)) for b in bounds] + ["+Inf"]  # Prometheus' spelling: 4.0, 0.0005, +Inf
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0  # ns for durations, rows for batch sizes

    def add(self, value: float, scaled: int) -> None:
        # bisect_left finds the first bound >= value: Prometheus buckets are "less than or equal".
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += scaled

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for le, n in zip(self.le, self.counts, strict=True):
            acc += n
            out.append((le, float(acc)))
        return out


class _Snapshot:
    """Everything one scrape exports for a model version, copied under its lock."""

    __slots__ = (
        "batch", "executions", "failed_ns", "in_flight", "inferences", "labels", "load_s", "outcomes",
        "phase_ns", "phases", "queue_depth", "ready",
    )  # fmt: skip

    def __init__(self, m: ModelMetrics) -> None:
        self.labels = [m.name, m.version]
        self.phases = {k: (h.cumulative(), h.sum / _NS_PER_S) for k, h in m._phases.items()}
        self.phase_ns = {k: h.sum for k, h in m._phases.items()}
        self.batch = (m._batch.cumulative(), float(m._batch.sum))
        self.outcomes = dict(m._outcomes)
        self.failed_ns = m._failed_ns
        self.inferences = m._inference_count
        self.executions = m._execution_count
        self.queue_depth = m._queue_depth
        self.in_flight = m._in_flight_n
        self.ready = m._ready
        self.load_s = m._load_s


class ModelMetrics:
    """Metrics of one model version. Thread-safe: called from gRPC handlers and batcher workers."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        # Phase histograms in seconds, keyed by the metric name's middle part.
        self._request = _Histogram(LATENCY_BUCKETS_S)
        self._queue = _Histogram(LATENCY_BUCKETS_S)
        self._preprocess = _Histogram(LATENCY_BUCKETS_S)
        self._compute = _Histogram(LATENCY_BUCKETS_S)
        self._phases = {
            "request": self._request,
            "queue": self._queue,
            "preprocess": self._preprocess,
            "compute": self._compute,
        }
        self._batch = _Histogram(BATCH_SIZE_BUCKETS)
        # Every outcome is there from the start, so each series reads 0 before its first event and
        # rate()/increase() see the first one.
        self._outcomes: dict[str, int] = dict.fromkeys(REQUEST_OUTCOMES, 0)
        self._failed_ns = 0
        self._inference_count = 0
        self._execution_count = 0
        self._last_inference_ms = 0
        self._batches: dict[int, list[int]] = {}  # batch size → [executions, compute ns]
        self._queue_depth = 0
        self._in_flight_n = 0
        self._ready = False
        self._load_s = 0.0
        self._in_flight = _InFlight(self)

    def request_done(
        self,
        outcome: str,
        total_s: float,
        queue_s: float | None = None,
        preprocess_s: float | None = None,
        compute_s: float | None = None,
        inferences: int = 1,
    ) -> None:
        """Record one finished request. Phases that did not happen (or were not measured) are None.

        Phase histograms and durations take successful requests only (as Triton's statistics do), so that
        fast failures do not pull latency quantiles down; failures are counted by outcome instead.
        """
        if outcome not in self._outcomes:
            raise ValueError(
                f"unknown request outcome {outcome!r}; expected one of {', '.join(REQUEST_OUTCOMES)}"
            )
        now_ms = int(time.time() * 1000)
        with self._lock:
            self._outcomes[outcome] += 1
            self._last_inference_ms = now_ms
            if outcome != Outcome.SUCCESS:
                self._failed_ns += int(total_s * _NS_PER_S)
                return
            self._inference_count += inferences
            self._request.add(total_s, int(total_s * _NS_PER_S))
            if queue_s is not None:
                self._queue.add(queue_s, int(queue_s * _NS_PER_S))
            if preprocess_s is not None:
                self._preprocess.add(preprocess_s, int(preprocess_s * _NS_PER_S))
            if compute_s is not None:
                self._compute.add(compute_s, int(compute_s * _NS_PER_S))

    def batch_executed(self, batch_size: int, compute_s: float) -> None:
        """Record one successful backend execution of `batch_size` inferences."""
        ns = int(compute_s * _NS_PER_S)
        with self._lock:
            self._execution_count += 1
            self._batch.add(batch_size, batch_size)
            per_size = self._batches.get(batch_size)
            if per_size is None:
                self._batches[batch_size] = [1, ns]
            else:
                per_size[0] += 1
                per_size[1] += ns

    def set_queue_depth(self, n: int) -> None:
        self._queue_depth = n  # a single store: atomic under the GIL, no lock needed

    def in_flight(self) -> AbstractContextManager[None]:
        return self._in_flight

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def set_load_time(self, seconds: float) -> None:
        self._load_s = seconds

    def statistics(self) -> ModelStatistics:
        zero = StatDuration()
        with self._lock:
            failures: dict[str, int] = {o: self._outcomes[o] for o in FAILURES}
            return ModelStatistics(
                name=self.name,
                version=self.version,
                last_inference_ms=self._last_inference_ms,
                inference_count=self._inference_count,
                execution_count=self._execution_count,
                success=StatDuration(self._request.count, self._request.sum),
                fail=StatDuration(sum(failures.values()), self._failed_ns),
                queue=StatDuration(self._queue.count, self._queue.sum),
                compute_input=StatDuration(self._preprocess.count, self._preprocess.sum),
                compute_infer=StatDuration(self._compute.count, self._compute.sum),
                compute_output=zero,
                failures=failures,
                batch_stats=tuple(
                    BatchStatistics(size, zero, StatDuration(n, ns), zero)
                    for size, (n, ns) in sorted(self._batches.items())
                ),
            )

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            return _Snapshot(self)


class _InFlight(AbstractContextManager[None]):
    """Holds no per-request state: one instance serves every request, so `in_flight()` allocates nothing."""

    __slots__ = ("_model",)

    def __init__(self, model: ModelMetrics) -> None:
        self._model = model

    def __enter__(self) -> None:
        with self._model._lock:
            self._model._in_flight_n += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._model._lock:
            self._model._in_flight_n -= 1


class _Nothing(AbstractContextManager[None]):
    __slots__ = ()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_NOTHING: Final = _Nothing()


def _ignore(*args: object, **kwargs: object) -> None:
    return None


class _DisabledModelMetrics(ModelMetrics):
    """What `ServerMetrics(enabled=False)` hands out: every method returns at once."""

    request_done = batch_executed = set_queue_depth = set_ready = set_load_time = _ignore

    def in_flight(self) -> AbstractContextManager[None]:
        return _NOTHING


_LABELS: Final = ("model", "version")
_PHASE_HELP: Final = {
    "request": "End-to-end time of successful requests, arrival to response.",
    "queue": "Time successful requests waited in the batcher's queue.",
    "preprocess": "Time successful requests spent decoding and preprocessing their input.",
    "compute": "Backend execution time of the batch each successful request was computed in.",
}


class _ModelsCollector(Collector):
    """Exports every ModelMetrics of one ServerMetrics, from snapshots taken at scrape time."""

    def __init__(self, owner: ServerMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        triton = list(_triton_families([])) if self._owner.triton_names else []
        return [*self._families([], 0), *triton]

    def collect(self) -> Iterator[Metric]:
        snapshots = [m._snapshot() for m in self._owner.models()]
        yield from self._families(snapshots, self._owner.unknown_model_count)
        if self._owner.triton_names:
            yield from _triton_families(snapshots)

    @staticmethod
    def _families(snapshots: Iterable[_Snapshot], unknown: int) -> Iterator[Metric]:
        snapshots = list(snapshots)
        for phase, help_text in _PHASE_HELP.items():
            family = HistogramMetricFamily(f"{PREFIX}_{phase}_duration_seconds", help_text, labels=_LABELS)
            for s in snapshots:
                buckets, total = s.phases[phase]
                family.add_metric(s.labels, buckets, total)
            yield family
        batch = HistogramMetricFamily(
            f"{PREFIX}_batch_size", "Number of inferences in each executed batch.", labels=_LABELS
        )
        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Finished requests by outcome (success or the failure reason); not_found under model _unknown.",
            labels=(*_LABELS, "outcome"),
        )
        failed = CounterMetricFamily(
            f"{PREFIX}_failed_request_duration_seconds",
            "Cumulative end-to-end time of failed requests.",
            labels=_LABELS,
        )
        inferences = CounterMetricFamily(
            f"{PREFIX}_inferences",
            "Inferences in successful requests (a request of n images counts n).",
            labels=_LABELS,
        )
        executions = CounterMetricFamily(
            f"{PREFIX}_executions",
            "Batches executed by the backend; inferences / executions is the average batch size.",
            labels=_LABELS,
        )
        queue_depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Requests waiting in the batcher's queue.", labels=_LABELS
        )
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_requests_in_flight", "Requests received and not yet answered.", labels=_LABELS
        )
        ready = GaugeMetricFamily(
            f"{PREFIX}_model_ready", "1 when the model version is ready to serve, else 0.", labels=_LABELS
        )
        load = GaugeMetricFamily(
            f"{PREFIX}_model_load_duration_seconds",
            "Time the model version took to load and warm up.",
            labels=_LABELS,
        )
        for s in snapshots:
            batch.add_metric(s.labels, *s.batch)
            for outcome, n in s.outcomes.items():
                requests.add_metric([*s.labels, outcome], n)
            failed.add_metric(s.labels, s.failed_ns / _NS_PER_S)
            inferences.add_metric(s.labels, s.inferences)
            executions.add_metric(s.labels, s.executions)
            queue_depth.add_metric(s.labels, s.queue_depth)
            in_flight.add_metric(s.labels, s.in_flight)
            ready.add_metric(s.labels, 1.0 if s.ready else 0.0)
            load.add_metric(s.labels, s.load_s)
        requests.add_metric([UNKNOWN_MODEL_LABEL, UNKNOWN_MODEL_LABEL, Outcome.NOT_FOUND], unknown)
        yield from (batch, requests, failed, inferences, executions, queue_depth, in_flight, ready, load)


# Triton's counters carry no `_total` suffix, and dashboards query them by that exact name.
TRITON_COUNTERS: Final = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        *(
            f"nv_inference_{phase}_duration_us"
            for phase in ("request", "queue", "compute_input", "compute_infer", "compute_output")
        ),
    }
)
# prometheus_client's text format names every counter family `<name>_total` in its HELP and TYPE lines
# (OpenMetrics does not), which over Triton's `nv_…` samples leaves them without help and type for
# text-format scrapers (promtool check metrics: "no help text").
_TRITON_TOTAL = re.compile(rb"^# (HELP|TYPE) (nv_inference_\w+)_total ", re.MULTILINE)


def _triton_counter(name: str, help_text: str) -> Metric:
    # A CounterMetricFamily would add `_total` to the samples, so the family is a plain counter-typed Metric
    # with its samples named as Triton names them (Prometheus stores them as counters:
    # tests/test_prometheus_integration.py); text_exposition names its HELP/TYPE lines the same way.
    assert name in TRITON_COUNTERS, name
    return Metric(name, help_text, "counter")


def text_exposition(registry: CollectorRegistry) -> bytes:
    """Prometheus' text format (0.0.4), with Triton's counters described under their samples' names, as
    Triton's own /metrics does (`# TYPE nv_inference_count counter` over `nv_inference_count{…}`)."""
    return _describe_triton_counters(generate_latest(registry))


def _describe_triton_counters(text: bytes) -> bytes:
    def fixed(match: re.Match[bytes]) -> bytes:
        if match[2].decode() not in TRITON_COUNTERS:
            return match[0]
        return b"# " + match[1] + b" " + match[2] + b" "

    return _TRITON_TOTAL.sub(fixed, text)


def _triton_families(snapshots: Iterable[_Snapshot]) -> Iterator[Metric]:
    """Triton's per-model inference metrics (docs/metrics.md, "Triton's metric names"), from the snapshots
    the resnet_serve_* families were built from: durations are successful requests' cumulative µs."""
    success = _triton_counter("nv_inference_request_success", "Number of successful inference requests.")
    failure = _triton_counter(
        "nv_inference_request_failure", "Number of failed inference requests, by Triton's reason."
    )
    inferences = _triton_counter("nv_inference_count", "Number of inferences performed (a batch of n: n).")
    executions = _triton_counter("nv_inference_exec_count", "Number of batch executions performed.")
    durations = {
        phase: _triton_counter(f"nv_inference_{name}_duration_us", help_text)
        for phase, name, help_text in (
            ("request", "request", "Cumulative end-to-end inference request duration in microseconds."),
            ("queue", "queue", "Cumulative time requests waited in the scheduling queue, microseconds."),
            ("preprocess", "compute_input", "Cumulative input processing duration in microseconds."),
            ("compute", "compute_infer", "Cumulative model execution duration in microseconds."),
            (
                "",
                "compute_output",
                "Cumulative output processing duration in microseconds (not measured: 0).",
            ),
        )
    }
    pending = GaugeMetricFamily(
        "nv_inference_pending_request_count",
        "Number of requests awaiting execution (queued in the batcher).",
        labels=_LABELS,
    )
    for s in snapshots:
        labels = dict(zip(_LABELS, s.labels, strict=True))
        success.add_sample(success.name, labels, s.outcomes[Outcome.SUCCESS])
        reasons = dict.fromkeys(sorted(set(TRITON_FAILURE_REASONS.values())), 0)
        for outcome in FAILURES:
            reasons[TRITON_FAILURE_REASONS[outcome]] += s.outcomes[outcome]
        for reason, n in reasons.items():
            failure.add_sample(failure.name, {**labels, "reason": reason}, n)
        inferences.add_sample(inferences.name, labels, s.inferences)
        executions.add_sample(executions.name, labels, s.executions)
        for phase, family in durations.items():
            family.add_sample(family.name, labels, s.phase_ns.get(phase, 0) // 1000)
        pending.add_metric(s.labels, s.queue_depth)
    yield from (success, failure, inferences, executions, *durations.values(), pending)


class _AccessCollector(Collector):
    """`resnet_serve_access_refused_total`, from ServerMetrics' refusal counts at scrape time."""

    def __init__(self, owner: ServerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_access_refused",
            "Requests refused by access control (restricted groups, bearer tokens, model control), by front "
            "end, protocol group and reason.",
            labels=("protocol", "group", "reason"),
        )
        for labels, n in sorted(self._owner.access_refusals().items()):
            family.add_metric(list(labels), n)
        yield family


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
        self._http: list[tuple[object, threading.Thread]] = []
        self._unknown = 0
        self._refused: dict[tuple[str, str, str], int] = {}
        if not enabled:
            return
        self.registry.register(_ModelsCollector(self))
        self.registry.register(_AccessCollector(self))
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
                found = (ModelMetrics if self.enabled else _DisabledModelMetrics)(name, version)
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
        if protocol not in ACCESS_PROTOCOLS or reason not in ACCESS_REFUSAL_REASONS:
            raise ValueError(f"unknown access refusal {protocol!r}/{reason!r}")
        if not self.enabled:
            return
        key = (protocol, group, reason)
        with self._lock:
            self._refused[key] = self._refused.get(key, 0) + n

    def access_refusals(self) -> dict[tuple[str, str, str], int]:
        """Refusals so far by (protocol, group, reason)."""
        with self._lock:
            return dict(self._refused)

    def render(self) -> bytes:
        """The text exposition Prometheus would scrape, for tests and in-process inspection."""
        return text_exposition(self.registry)

    def start_http_server(self, host: str, port: int) -> int:
        """Serve /metrics on host:port from a daemon thread; port 0 picks a free port. Returns the port.

        Only /metrics: every other path is 404, so a probe pointed at this port by mistake (Triton's
        /v2/health/ready on :8002) fails instead of reading the metrics as "ready"."""
        # Content negotiation (text or OpenMetrics, `name[]` filters) stays prometheus_client's; the text
        # format gets Triton's counter names fixed (text_exposition), then gzip when the scraper accepts it.
        exposition = make_wsgi_app(self.registry, disable_compression=True)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"not found: this port serves /metrics only\n"]
            answer: list[Any] = []
            body = b"".join(exposition(environ, lambda status, headers: answer.extend((status, headers))))
            status, headers = answer
            if dict(headers).get("Content-Type", "").startswith("text/plain"):
                body = _describe_triton_counters(body)
            if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                body = gzip.compress(body)
                headers = [*headers, ("Content-Encoding", "gzip")]
            start_response(status, headers)
            return [body]

        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsServer", (_ThreadingWSGIServer,), {"address_family": family})
        server: WSGIServer = make_server(host, port, app, server_class, handler_class=_SilentHandler)
        thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        thread.start()
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
