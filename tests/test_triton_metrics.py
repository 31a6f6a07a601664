"""Triton's metric names (nv_inference_*), with Triton's labels, from the same counters as ours."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from resnet_serve.server.observability.metrics import TRITON_FAILURE_REASONS, ServerMetrics
from resnet_serve.server.outcomes import FAILURES

LABELS = {"model": "m", "version": "2"}


def samples(metrics: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def key(name: str, **extra: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({**LABELS, **extra}.items()))


def test_nv_inference_metrics_carry_triton_names_labels_and_units() -> None:
    metrics = ServerMetrics(registry=CollectorRegistry())
    model = metrics.model("m", "2")
    for _ in range(3):
        model.request_done(
            "success", 0.004, queue_s=0.001, preprocess_s=0.0005, compute_s=0.002, inferences=2
        )
    model.batch_executed(4, 0.002)
    model.batch_executed(2, 0.002)
    for outcome in FAILURES:
        model.request_done(outcome, 0.001)
    model.set_queue_depth(5)
    got = samples(metrics)
    assert got[key("nv_inference_request_success")] == 3
    assert got[key("nv_inference_count")] == 6
    assert got[key("nv_inference_exec_count")] == 2
    assert got[key("nv_inference_request_duration_us")] == 12_000
    assert got[key("nv_inference_queue_duration_us")] == 3_000
    assert got[key("nv_inference_compute_input_duration_us")] == 1_500
    assert got[key("nv_inference_compute_infer_duration_us")] == 6_000
    assert got[key("nv_inference_compute_output_duration_us")] == 0
    assert got[key("nv_inference_pending_request_count")] == 5
    # Triton's reasons: a full queue and an expired queue timeout are both REJECTED.
    assert {
        r: got[key("nv_inference_request_failure", reason=r)]
        for r in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
    } == {
        "REJECTED": 2,
        "CANCELED": 1,
        "BACKEND": 1,
        "OTHER": 2,
    }
    assert set(TRITON_FAILURE_REASONS) == set(FAILURES)


def test_triton_counters_are_exposed_without_a_total_suffix_as_triton_does() -> None:
    metrics = ServerMetrics(registry=CollectorRegistry())
    metrics.model("m", "2").request_done("success", 0.001)
    lines = metrics.render().decode().splitlines()
    assert 'nv_inference_request_success{model="m",version="2"} 1.0' in lines
    assert not any(line.startswith("nv_inference_request_success_total") for line in lines)


def test_triton_names_off_exports_only_ours() -> None:
    metrics = ServerMetrics(registry=CollectorRegistry(), triton_names=False)
    metrics.model("m", "2").request_done("success", 0.001)
    text = metrics.render().decode()
    assert "nv_inference" not in text and "resnet_serve_requests_total" in text
