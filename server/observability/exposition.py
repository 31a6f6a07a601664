"""Our Prometheus names (`resnet_serve_*`, docs/metrics.md): the families built from the model versions'
snapshots at scrape time, and the text exposition (with Triton's counters described under their own names)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from resnet_serve.server.observability.model_metrics import LABELS, NS_PER_S, UNKNOWN_MODEL_LABEL, Snapshot
from resnet_serve.server.observability.refusals import refusals_family
from resnet_serve.server.observability.triton_metrics import describe_triton_counters, triton_families
from resnet_serve.server.outcomes import Outcome

if TYPE_CHECKING:
    from resnet_serve.server.observability.metrics import ServerMetrics

PREFIX: Final = "resnet_serve"


_PHASE_HELP: Final = {
    "request": "End-to-end time of successful requests, arrival to response.",
    "queue": "Time successful requests waited in the batcher's queue.",
    "preprocess": "Time successful requests spent decoding and preprocessing their input.",
    "compute": "Backend execution time of the batch each successful request was computed in.",
}


class ModelsCollector(Collector):
    """Exports every ModelMetrics of one ServerMetrics, and its access refusals, from snapshots taken at
    scrape time: the server's totals (`ServerMetrics.totals()`: its own counts, plus those of its peer
    processes when it has any), taken once per scrape so that every family adds up the same states."""

    def __init__(self, owner: ServerMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        triton = list(triton_families([])) if self._owner.triton_names else []
        return [*self._families([], 0), *triton, refusals_family(PREFIX, {})]

    def collect(self) -> Iterator[Metric]:
        totals = self._owner.totals()
        snapshots = [m.snapshot() for m in totals.models.values()]
        yield from self._families(snapshots, totals.unknown)
        if self._owner.triton_names:
            yield from triton_families(snapshots)
        yield refusals_family(PREFIX, totals.refusals)

    @staticmethod
    def _families(snapshots: Iterable[Snapshot], unknown: int) -> Iterator[Metric]:
        snapshots = list(snapshots)
        for phase, help_text in _PHASE_HELP.items():
            family = HistogramMetricFamily(f"{PREFIX}_{phase}_duration_seconds", help_text, labels=LABELS)
            for s in snapshots:
                buckets, total = s.phases[phase]
                family.add_metric(s.labels, buckets, total)
            yield family
        batch = HistogramMetricFamily(
            f"{PREFIX}_batch_size", "Number of inferences in each executed batch.", labels=LABELS
        )
        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Finished requests by outcome (success or the failure reason); not_found under model _unknown.",
            labels=(*LABELS, "outcome"),
        )
        failed = CounterMetricFamily(
            f"{PREFIX}_failed_request_duration_seconds",
            "Cumulative end-to-end time of failed requests.",
            labels=LABELS,
        )
        inferences = CounterMetricFamily(
            f"{PREFIX}_inferences",
            "Inferences in successful requests (a request of n images counts n).",
            labels=LABELS,
        )
        executions = CounterMetricFamily(
            f"{PREFIX}_executions",
            "Batches executed by the backend; inferences / executions is the average batch size.",
            labels=LABELS,
        )
        queue_depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Requests waiting in the batcher's queue.", labels=LABELS
        )
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_requests_in_flight", "Requests received and not yet answered.", labels=LABELS
        )
        ready = GaugeMetricFamily(
            f"{PREFIX}_model_ready", "1 when the model version is ready to serve, else 0.", labels=LABELS
        )
        load = GaugeMetricFamily(
            f"{PREFIX}_model_load_duration_seconds",
            "Time the model version took to load and warm up.",
            labels=LABELS,
        )
        for s in snapshots:
            batch.add_metric(s.labels, *s.batch)
            for outcome, n in s.outcomes.items():
                requests.add_metric([*s.labels, outcome], n)
            failed.add_metric(s.labels, s.failed_ns / NS_PER_S)
            inferences.add_metric(s.labels, s.inferences)
            executions.add_metric(s.labels, s.executions)
            queue_depth.add_metric(s.labels, s.queue_depth)
            in_flight.add_metric(s.labels, s.in_flight)
            ready.add_metric(s.labels, 1.0 if s.ready else 0.0)
            load.add_metric(s.labels, s.load_s)
        requests.add_metric([UNKNOWN_MODEL_LABEL, UNKNOWN_MODEL_LABEL, Outcome.NOT_FOUND], unknown)
        yield from (batch, requests, failed, inferences, executions, queue_depth, in_flight, ready, load)


def text_exposition(registry: CollectorRegistry) -> bytes:
    """Prometheus' text format (0.0.4), with Triton's counters described under their samples' names, as
    Triton's own /metrics does (`# TYPE nv_inference_count counter` over `nv_inference_count{…}`)."""
    return describe_triton_counters(generate_latest(registry))
