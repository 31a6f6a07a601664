"""ServerMetrics / ModelMetrics: what the batcher and services report is what Prometheus and
ModelStatistics show, and the two always agree."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, ProcessCollector

from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.observability.model_metrics import UNKNOWN_MODEL_LABEL
from resnet_serve.server.outcomes import FAILURES, REQUEST_OUTCOMES

LABELS = {"model": "resnet20", "version": "1"}


def sample(metrics: ServerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_successful_request_lands_in_every_phase_histogram_and_in_statistics() -> None:
    metrics = ServerMetrics()
    model = metrics.model("resnet20", "1")
    model.request_done("success", total_s=0.004, queue_s=0.001, preprocess_s=0.0005, compute_s=0.002)
    model.request_done("success", total_s=0.006, queue_s=0.002, preprocess_s=0.0005, compute_s=0.003)

    for family, expected in [
        ("request", 0.010),
        ("queue", 0.003),
        ("preprocess", 0.001),
        ("compute", 0.005),
    ]:
        assert sample(metrics, f"resnet_serve_{family}_duration_seconds_count", **LABELS) == 2
        assert sample(metrics, f"resnet_serve_{family}_duration_seconds_sum", **LABELS) == pytest.approx(
            expected
        )
    # 4 ms and 6 ms fall either side of the 5 ms bucket bound.
    assert sample(metrics, "resnet_serve_request_duration_seconds_bucket", **LABELS, le="0.005") == 1
    assert sample(metrics, "resnet_serve_requests_total", **LABELS, outcome="success") == 2

    stats = model.statistics()
    assert (stats.success.count, stats.success.ns) == (2, 10_000_000)
    assert (stats.queue.count, stats.queue.ns) == (2, 3_000_000)
    assert (stats.compute_input.count, stats.compute_input.ns) == (2, 1_000_000)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (2, 5_000_000)
    assert stats.inference_count == 2
    assert stats.fail.count == 0
    assert stats.last_inference_ms > 0


def test_failures_are_counted_by_reason_and_kept_out_of_latency_histograms() -> None:
    metrics = ServerMetrics()
    model = metrics.model("resnet20", "1")
    for i, outcome in enumerate(FAILURES):
        for _ in range(i + 1):
            model.request_done(outcome, total_s=0.5, queue_s=0.25)

    for i, outcome in enumerate(FAILURES):
        assert sample(metrics, "resnet_serve_requests_total", **LABELS, outcome=outcome) == i + 1
    n_failed = sum(range(1, len(FAILURES) + 1))
    assert sample(metrics, "resnet_serve_requests_total", **LABELS, outcome="success") == 0
    assert sample(metrics, "resnet_serve_request_duration_seconds_count", **LABELS) == 0
    assert sample(metrics, "resnet_serve_queue_duration_seconds_count", **LABELS) == 0
    assert sample(metrics, "resnet_serve_inferences_total", **LABELS) == 0
    assert sample(metrics, "resnet_serve_failed_request_duration_seconds_total", **LABELS) == pytest.approx(
        0.5 * n_failed
    )
    stats = model.statistics()
    assert stats.failures == {o: i + 1 for i, o in enumerate(FAILURES)}
    assert (stats.fail.count, stats.fail.ns) == (n_failed, n_failed * 500_000_000)
    assert stats.queue.count == 0


def test_an_unknown_outcome_is_a_programming_error() -> None:
    model = ServerMetrics().model("resnet20", "1")
    with pytest.raises(ValueError, match="unknown request outcome 'timeout'"):
        model.request_done("timeout", total_s=0.1)


def test_every_outcome_series_exists_at_zero_once_the_model_is_known() -> None:
    metrics = ServerMetrics()
    metrics.model("resnet20", "1")
    for outcome in REQUEST_OUTCOMES:
        assert sample(metrics, "resnet_serve_requests_total", **LABELS, outcome=outcome) == 0


def test_unknown_models_share_one_series_whatever_name_was_asked_for() -> None:
    metrics = ServerMetrics()
    for name in ("nope", "nope2", "x" * 500):
        metrics.unknown_model(name)
    labels = {"model": UNKNOWN_MODEL_LABEL, "version": UNKNOWN_MODEL_LABEL, "outcome": "not_found"}
    assert sample(metrics, "resnet_serve_requests_total", **labels) == 3
    assert metrics.unknown_model_count == 3
    assert b"nope" not in metrics.render()


def test_average_batch_size_is_inferences_over_executions() -> None:
    metrics = ServerMetrics()
    model = metrics.model("resnet20", "1")
    batches = [4, 4, 1, 7]
    for size in batches:
        model.batch_executed(size, compute_s=0.001 * size)
        for _ in range(size):
            model.request_done("success", total_s=0.01, compute_s=0.001 * size)

    inferences = sample(metrics, "resnet_serve_inferences_total", **LABELS)
    executions = sample(metrics, "resnet_serve_executions_total", **LABELS)
    assert (inferences, executions) == (16, 4)
    assert sample(metrics, "resnet_serve_batch_size_sum", **LABELS) == 16
    assert sample(metrics, "resnet_serve_batch_size_bucket", **LABELS, le="4.0") == 3
    stats = model.statistics()
    assert (stats.inference_count, stats.execution_count) == (16, 4)
    assert [(b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in stats.batch_stats] == [
        (1, 1, 1_000_000),
        (4, 2, 8_000_000),
        (7, 1, 7_000_000),
    ]


def test_a_request_of_several_images_counts_each_inference() -> None:
    metrics = ServerMetrics()
    model = metrics.model("resnet20", "1")
    model.request_done("success", total_s=0.01, inferences=5)
    assert sample(metrics, "resnet_serve_inferences_total", **LABELS) == 5
    assert sample(metrics, "resnet_serve_requests_total", **LABELS, outcome="success") == 1
    assert model.statistics().inference_count == 5


def test_in_flight_gauge_goes_back_down_even_when_the_handler_raises() -> None:
    metrics = ServerMetrics()
    model = metrics.model("resnet20", "1")
    with model.in_flight(), model.in_flight():
        assert sample(metrics, "resnet_serve_requests_in_flight", **LABELS) == 2
    with pytest.raises(RuntimeError), model.in_flight():
        raise RuntimeError("handler failed")
    assert sample(metrics, "resnet_serve_requests_in_flight", **LABELS) == 0


def test_gauges_report_the_last_value_set() -> None:
    metrics = ServerMetrics()
    model = metrics.model("resnet20", "1")
    model.set_queue_depth(7)
    model.set_queue_depth(3)
    model.set_ready(True)
    model.set_load_time(1.25)
    assert sample(metrics, "resnet_serve_queue_depth", **LABELS) == 3
    assert sample(metrics, "resnet_serve_model_ready", **LABELS) == 1
    assert sample(metrics, "resnet_serve_model_load_duration_seconds", **LABELS) == 1.25
    model.set_ready(False)
    assert sample(metrics, "resnet_serve_model_ready", **LABELS) == 0


def test_model_is_cached_per_name_and_version_and_registries_are_independent() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    assert first.model("a", "1") is first.model("a", "1")
    assert first.model("a", "1") is not first.model("a", "2")
    first.model("a", "1").request_done("success", total_s=0.01)
    assert (
        first.registry.get_sample_value("resnet_serve_requests_total", {**_ab(), "outcome": "success"}) == 1
    )
    assert (
        second.registry.get_sample_value("resnet_serve_requests_total", {**_ab(), "outcome": "success"})
        is None
    )


def _ab() -> dict[str, str]:
    return {"model": "a", "version": "1"}


def test_process_metrics_are_on_the_server_registry() -> None:
    registry = CollectorRegistry()
    ServerMetrics(registry=registry)
    assert registry.get_sample_value("process_cpu_seconds_total") is not None


def test_a_registry_that_already_has_process_metrics_can_be_shared() -> None:
    registry = CollectorRegistry()
    ServerMetrics(registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        ServerMetrics(registry=registry)  # the same models collector twice would export every series twice
    other = CollectorRegistry()
    ProcessCollector(registry=other)
    ServerMetrics(registry=other).model("a", "1")
    assert other.get_sample_value("process_cpu_seconds_total") is not None


def test_disabled_metrics_register_nothing_and_record_nothing() -> None:
    metrics = ServerMetrics(enabled=False)
    model = metrics.model("resnet20", "1")
    model.request_done("success", total_s=0.01, queue_s=0.001, compute_s=0.005)
    model.request_done("not-an-outcome", total_s=0.01)  # no validation either: nothing at all happens
    model.batch_executed(4, 0.005)
    model.set_queue_depth(3)
    model.set_ready(True)
    model.set_load_time(1.0)
    metrics.unknown_model("x")
    with model.in_flight():
        pass
    assert metrics.render() == b""
    stats = model.statistics()
    assert (stats.success.count, stats.inference_count, stats.execution_count) == (0, 0, 0)
    assert model is metrics.model("resnet20", "1")


def test_concurrent_reports_are_neither_lost_nor_disagree() -> None:
    metrics = ServerMetrics()
    model = metrics.model("resnet20", "1")
    per_thread, threads = 2000, 4

    def work() -> None:
        for _ in range(per_thread):
            model.request_done("success", total_s=0.001, queue_s=0.001)
            model.batch_executed(1, 0.001)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = per_thread * threads
    stats = model.statistics()
    assert (stats.success.count, stats.queue.count, stats.execution_count) == (total, total, total)
    assert sample(metrics, "resnet_serve_requests_total", **LABELS, outcome="success") == total
    assert sample(metrics, "resnet_serve_queue_duration_seconds_count", **LABELS) == total
    assert sample(metrics, "resnet_serve_executions_total", **LABELS) == total


def test_http_endpoint_on_a_free_port_serves_the_registry() -> None:
    metrics = ServerMetrics()
    metrics.model("resnet20", "1").request_done("success", total_s=0.003)
    port = metrics.start_http_server("127.0.0.1", 0)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'resnet_serve_requests_total{model="resnet20",outcome="success",version="1"} 1.0' in body
    finally:
        metrics.stop_http_server()


events = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(REQUEST_OUTCOMES),
            st.floats(0, 20),
            st.one_of(st.none(), st.floats(0, 1)),
            st.one_of(st.none(), st.floats(0, 1)),
            st.integers(1, 8),
        ),
        st.tuples(st.just("batch"), st.floats(0, 1), st.integers(1, 300)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events)
def test_prometheus_and_statistics_report_the_same_numbers(history: list[tuple[Any, ...]]) -> None:
    metrics = ServerMetrics()
    model = metrics.model("resnet20", "1")
    for event in history:
        if event[0] == "batch":
            model.batch_executed(event[2], event[1])
        else:
            outcome, total, queue, compute, rows = event
            model.request_done(outcome, total, queue_s=queue, compute_s=compute, inferences=rows)
    stats = model.statistics()

    def value(name: str, **labels: str) -> float:
        found = sample(metrics, name, **LABELS, **labels)
        assert found is not None, name
        return found

    for phase, stat in (("request", stats.success), ("queue", stats.queue), ("compute", stats.compute_infer)):
        assert value(f"resnet_serve_{phase}_duration_seconds_count") == stat.count
        assert value(f"resnet_serve_{phase}_duration_seconds_sum") == stat.ns / 1e9
        assert value(f"resnet_serve_{phase}_duration_seconds_bucket", le="+Inf") == stat.count
    assert value("resnet_serve_requests_total", outcome="success") == stats.success.count
    for outcome, n in stats.failures.items():
        assert value("resnet_serve_requests_total", outcome=outcome) == n
    assert value("resnet_serve_failed_request_duration_seconds_total") == stats.fail.ns / 1e9
    assert value("resnet_serve_inferences_total") == stats.inference_count
    assert value("resnet_serve_executions_total") == stats.execution_count
    assert value("resnet_serve_batch_size_count") == stats.execution_count
    assert value("resnet_serve_batch_size_sum") == sum(
        b.batch_size * b.compute_infer.count for b in stats.batch_stats
    )
    # A value above the last bucket bound lands only in +Inf.
    assert value("resnet_serve_batch_size_bucket", le="256.0") == sum(
        b.compute_infer.count for b in stats.batch_stats if b.batch_size <= 256
    )
