"""Triton's metric names (nv_inference_*), with Triton's labels, from the same counters as ours."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from support.metrics import Samples, exposed_samples

from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.observability.triton_metrics import TRITON_FAILURE_REASONS
from resnet_serve.server.outcomes import FAILURES

LABELS = {"model": "m", "version": "2"}


def samples(metrics: ServerMetrics) -> Samples:
    return exposed_samples(metrics.render().decode())


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


# promtool's naming rules that Triton's own names break, and that Triton's /metrics breaks the same way:
# renaming would break every Triton dashboard, so these are all it may say about nv_* (docs/metrics.md).
TRITON_NAMING_LINTS = (
    'counter metrics should have "_total" suffix',
    "metric names should not contain abbreviated units",
    'non-histogram and non-summary metrics should not have "_count" suffix',
)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_promtool_finds_help_and_type_for_every_triton_counter_in_a_real_scrape(encoding: str) -> None:
    metrics = ServerMetrics(registry=CollectorRegistry())
    model = metrics.model("m", "2")
    model.request_done("success", 0.004, queue_s=0.001, preprocess_s=0.0005, compute_s=0.002)
    model.batch_executed(1, 0.002)
    port = metrics.start_http_server("127.0.0.1", 0)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": "text/plain", "Accept-Encoding": encoding},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
            assert answer.headers["Content-Type"].startswith("text/plain")
    finally:
        metrics.stop_http_server()
    text = gzip.decompress(body) if encoding == "gzip" else body
    assert b"# TYPE nv_inference_count counter\n" in text
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    problems = (done.stdout + done.stderr).decode().splitlines()
    assert done.returncode in (0, 3), problems  # 3: lint findings only, no parse error
    assert problems, "promtool reports Triton's naming; an empty report means it did not run the lint"
    for line in problems:
        name, _, problem = line.partition(" ")
        assert name.startswith("nv_inference_") and problem in TRITON_NAMING_LINTS, line
