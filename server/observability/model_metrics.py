"""The counters of one model version (`ModelMetrics`), from which both the Prometheus families and Triton's
model statistics are built, so they always agree.

The batcher and the services report each finished request (`ModelMetrics.request_done`) and each executed
batch (`ModelMetrics.batch_executed`). Those calls only add to plain Python counters under one lock per
model version; at scrape time `snapshot()` copies them for the exposition (server/observability/exposition.py,
server/observability/triton_metrics.py), and `statistics()` turns the same counters into the cumulative
counts and nanoseconds of the KServe `ModelStatistics` RPC. One source for both means they cannot drift
apart, and a request costs about a microsecond instead of a dozen lock round trips through
prometheus_client's metric objects.
"""

from __future__ import annotations

import bisect
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from resnet_serve.server.outcomes import FAILURES, REQUEST_OUTCOMES, Outcome

# Inference on this server takes from a fraction of a millisecond (a small ResNet on a GPU) to a few
# hundred milliseconds (a big batch on 2 CPU cores), so the buckets are dense in 0.5-50 ms and sparse above.
LATENCY_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Every power of two plus the midpoints between them, so a max_batch_size of 6, 12, 24 ... has its own bucket.
BATCH_SIZE_BUCKETS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)

NS_PER_S: Final = 1_000_000_000


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

    def absorb(self, counts: list[int], total: int) -> None:
        if len(counts) != len(self.counts):
            raise ValueError(f"{len(counts)} bucket counts for a histogram of {len(self.counts)} buckets")
        for i, n in enumerate(counts):
            self.counts[i] += n
        self.count += sum(counts)
        self.sum += total

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for le, n in zip(self.le, self.counts, strict=True):
            acc += n
            out.append((le, float(acc)))
        return out


# Requests for models that are not served share one label pair: using the requested name as a label
# would let any client create unbounded series.
UNKNOWN_MODEL_LABEL: Final = "_unknown"
# The labels of every per-model-version series (a Snapshot's `labels` are their values).
LABELS: Final = ("model", "version")


@dataclass(frozen=True)
class MetricsState:
    """Everything one model version's `ModelMetrics` has counted, as plain data (picklable, and
    `MetricsState(**dataclasses.asdict(state))` rebuilds it), so that another process can add it to its own
    (`ModelMetrics.absorb`): the server's totals across processes (server/observability/totals.py)."""

    name: str
    version: str
    phase_counts: dict[str, list[int]]  # phase -> per-bucket counts of LATENCY_BUCKETS_S, the last one +Inf
    phase_ns: dict[str, int]  # phase -> sum in ns
    batch_counts: list[int]  # per-bucket counts of BATCH_SIZE_BUCKETS, the last one +Inf
    batch_rows: int  # sum of the batch sizes
    outcomes: dict[str, int]
    failed_ns: int
    inferences: int
    executions: int
    batches: list[tuple[int, int, int]]  # (batch size, executions, compute ns), ascending batch size
    last_inference_ms: int
    in_flight: int
    queue_depth: int
    ready: bool
    load_s: float


class Snapshot:
    """Everything one scrape exports for a model version, copied under its lock."""

    __slots__ = (
        "batch", "executions", "failed_ns", "in_flight", "inferences", "labels", "load_s", "outcomes",
        "phase_ns", "phases", "queue_depth", "ready",
    )  # fmt: skip

    def __init__(self, m: ModelMetrics) -> None:
        self.labels = [m.name, m.version]
        self.phases = {k: (h.cumulative(), h.sum / NS_PER_S) for k, h in m._phases.items()}
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
                self._failed_ns += int(total_s * NS_PER_S)
                return
            self._inference_count += inferences
            self._request.add(total_s, int(total_s * NS_PER_S))
            if queue_s is not None:
                self._queue.add(queue_s, int(queue_s * NS_PER_S))
            if preprocess_s is not None:
                self._preprocess.add(preprocess_s, int(preprocess_s * NS_PER_S))
            if compute_s is not None:
                self._compute.add(compute_s, int(compute_s * NS_PER_S))

    def batch_executed(self, batch_size: int, compute_s: float) -> None:
        """Record one successful backend execution of `batch_size` inferences."""
        ns = int(compute_s * NS_PER_S)
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

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self)

    def export(self) -> MetricsState:
        """A copy of every count, taken under the lock (a consistent state)."""
        with self._lock:
            return MetricsState(
                name=self.name,
                version=self.version,
                phase_counts={k: list(h.counts) for k, h in self._phases.items()},
                phase_ns={k: h.sum for k, h in self._phases.items()},
                batch_counts=list(self._batch.counts),
                batch_rows=self._batch.sum,
                outcomes=dict(self._outcomes),
                failed_ns=self._failed_ns,
                inferences=self._inference_count,
                executions=self._execution_count,
                batches=[(size, n, ns) for size, (n, ns) in sorted(self._batches.items())],
                last_inference_ms=self._last_inference_ms,
                in_flight=self._in_flight_n,
                queue_depth=self._queue_depth,
                ready=self._ready,
                load_s=self._load_s,
            )

    def absorb(self, state: MetricsState) -> None:
        """Add another process's counts of this model version to these: counters and histograms are summed,
        as are the gauges in flight and queue depth (each process has its own requests and queues); the
        last inference and the load time are the latest and longest, and the version is ready where any
        process says so. `statistics()` then equals that of one object that recorded every event."""
        if (state.name, state.version) != (self.name, self.version):
            raise ValueError(
                f"cannot add the metrics of {state.name}/{state.version} to {self.name}/{self.version}"
            )
        unknown = set(state.outcomes) - set(self._outcomes)
        if unknown or set(state.phase_counts) != set(self._phases):
            raise ValueError(
                f"not a state of this server's metrics: outcomes {sorted(unknown)}, "
                f"phases {sorted(state.phase_counts)}"
            )
        with self._lock:
            for phase, histogram in self._phases.items():
                histogram.absorb(state.phase_counts[phase], state.phase_ns[phase])
            self._batch.absorb(state.batch_counts, state.batch_rows)
            for outcome, n in state.outcomes.items():
                self._outcomes[outcome] += n
            self._failed_ns += state.failed_ns
            self._inference_count += state.inferences
            self._execution_count += state.executions
            for size, n, ns in state.batches:
                per_size = self._batches.setdefault(size, [0, 0])
                per_size[0] += n
                per_size[1] += ns
            self._last_inference_ms = max(self._last_inference_ms, state.last_inference_ms)
            self._in_flight_n += state.in_flight
            self._queue_depth += state.queue_depth
            self._ready = self._ready or state.ready
            self._load_s = max(self._load_s, state.load_s)


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


class DisabledModelMetrics(ModelMetrics):
    """What `ServerMetrics(enabled=False)` hands out: every method returns at once."""

    request_done = batch_executed = set_queue_depth = set_ready = set_load_time = absorb = _ignore

    def in_flight(self) -> AbstractContextManager[None]:
        return _NOTHING
