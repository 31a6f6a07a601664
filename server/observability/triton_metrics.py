"""Triton's metric names (`nv_inference_*`, docs/metrics.md "Triton's metric names"), built at scrape time
from the same snapshots as ours, so a Triton dashboard works unchanged."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric

from resnet_serve.server.observability.model_metrics import LABELS, Snapshot
from resnet_serve.server.outcomes import FAILURES, Outcome

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


def describe_triton_counters(text: bytes) -> bytes:
    def fixed(match: re.Match[bytes]) -> bytes:
        if match[2].decode() not in TRITON_COUNTERS:
            return match[0]
        return b"# " + match[1] + b" " + match[2] + b" "

    return _TRITON_TOTAL.sub(fixed, text)


def triton_families(snapshots: Iterable[Snapshot]) -> Iterator[Metric]:
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
        labels=LABELS,
    )
    for s in snapshots:
        labels = dict(zip(LABELS, s.labels, strict=True))
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
