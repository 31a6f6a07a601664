"""The real server scraped by a real Prometheus: PromQL answers agree with what the test's client saw.

`resnet-serve serve` runs as a subprocess on free ports with a deliberately slow model (so batches form
and queues fill), Prometheus (Debian's `prometheus` binary) scrapes it every second into a temporary
storage dir, and the test compares:

* p99 end-to-end latency from `histogram_quantile` with the p99 of the server-reported timings and of the
  client's own wall-clock measurements (equal to within one histogram bucket);
* average batch size (inferences ÷ executions) with the test's own count of images divided by the number
  of executions implied by the batch size each response reports;
* after a mix of good requests, corrupt images, unknown models, queue overflow and expired deadlines, each
  outcome counter with the number of responses the client got with the matching status.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from support.metrics import exposed_samples
from support.tiny_model import TINY_PREPROCESS

from resnet_serve.formats.metadata import ARCH_KEY, LABELS_KEY, PRECISION_KEY, PREPROCESS_KEY
from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.server.launch import free_port, serving, wait_ready
from resnet_serve.server.observability.model_metrics import LATENCY_BUCKETS_S, UNKNOWN_MODEL_LABEL
from resnet_serve.server.outcomes import FAILURES

PROMETHEUS = shutil.which("prometheus")
ROOT = Path(__file__).resolve().parents[1]
MODEL = "slow"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="the prometheus binary is not installed (apt-get install prometheus; CI installs it)",
    ),
]

# gRPC status the client sees → the outcome label the server must have counted.
STATUS_OUTCOME = {
    grpc.StatusCode.OK: "success",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_input",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.UNAVAILABLE: "queue_full",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded",
}


# ------------------------------------------------------------------------------------------------ model


def write_slow_onnx(path: Path, channels: int = 256, layers: int = 4) -> Path:
    """(N, 1, 8, 8) → `layers` 3x3 convolutions of `channels` → 10 logits: a few ms of CPU per image (the cost
    grows with the batch), so that a burst of requests overflows a small queue and outlives a short
    server-side timeout."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights = [], []
    previous, n_in = "input", 1
    for i in range(layers):
        w = rng.normal(0, (9 * n_in) ** -0.5, (channels, n_in, 3, 3)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [previous, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        previous, n_in = f"r{i}", channels
    w_fc = rng.normal(0, (64 * channels) ** -0.5, (64 * channels, 10)).astype(np.float32)
    weights.append(numpy_helper.from_array(w_fc, "w_fc"))
    nodes.append(helper.make_node("Flatten", [previous], ["flat"], axis=1))
    nodes.append(helper.make_node("MatMul", ["flat", "w_fc"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {
        LABELS_KEY: json.dumps([str(i) for i in range(10)]),
        PREPROCESS_KEY: json.dumps(TINY_PREPROCESS),
        ARCH_KEY: "slow-mlp",
        PRECISION_KEY: "fp32",
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- server


@dataclass
class Server:
    grpc_target: str
    metrics_url: str
    stub: pb_grpc.ImageClassifierStub

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return exposed_samples(response.read().decode())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model = write_slow_onnx(tmp_path_factory.mktemp("slow") / "model.onnx")
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    ready_file = log_path.with_name("ready.json")
    args = (
        "--ready-file", str(ready_file),
        "--model", f"{MODEL}={model}",
        "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0",
        "--instances", "1", "--intra-op-threads", "1", "--preprocess-threads", "2",
        "--max-batch-size", "4", "--max-queue-delay-ms", "2",
        "--max-queue-size", "16", "--timeout-ms", "15",
    )  # fmt: skip
    with log_path.open("w") as log, serving(*args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT) as process:
        ready = wait_ready(process, ready_file, 60, log=log_path)
        target = ready.grpc_target
        assert ready.metrics_url is not None
        channel = grpc.insecure_channel(target)
        yield Server(
            target,
            ready.metrics_url,
            pb_grpc.ImageClassifierStub(channel),  # type: ignore[no-untyped-call]
        )
        channel.close()


# ------------------------------------------------------------------------------------------- prometheus


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    assert PROMETHEUS is not None
    work = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlparse(server.metrics_url).netloc
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: resnet-serve\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    with (work / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            prom = Prometheus(f"http://127.0.0.1:{port}")

            def scraped() -> bool:
                if process.poll() is not None:
                    pytest.fail(f"prometheus exited: {(work / 'prometheus.log').read_text()[-2000:]}")
                try:
                    return prom.scalar('up{job="resnet-serve"}') == 1.0
                except OSError:
                    return False

            wait_for(scraped, 60, "Prometheus' first successful scrape")
            yield prom
        finally:
            process.terminate()
            process.wait(timeout=20)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------------------------- traffic


@dataclass
class Reply:
    code: grpc.StatusCode
    client_s: float
    response: pb.ClassifyResponse | None


def send(server: Server, requests: list[pb.ClassifyRequest]) -> list[Reply]:
    """All requests at once (gRPC futures), so the server sees them concurrently."""
    started = time.perf_counter()
    futures = [server.stub.Classify.future(r, timeout=60) for r in requests]
    replies = []
    for future in futures:
        try:
            response = future.result()
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            response, code = None, exc.code()
        # Futures resolve in any order; the time until this one's result is an upper bound on its latency.
        replies.append(Reply(code, time.perf_counter() - started, response))
    return replies


def send_paced(server: Server, n: int, concurrency: int) -> list[Reply]:
    """n good requests, `concurrency` at a time (no more than the queue holds), each timed on its own."""
    replies: list[Reply] = []
    for start in range(0, n, concurrency):
        futures = []
        for i in range(start, min(n, start + concurrency)):
            request = pb.ClassifyRequest(model=MODEL, image=png(i))
            futures.append((time.perf_counter(), server.stub.Classify.future(request, timeout=60)))
        for sent, future in futures:
            try:
                response, code = future.result(), grpc.StatusCode.OK
            except grpc.RpcError as exc:  # the 15 ms server timeout can expire on a busy machine
                response, code = None, exc.code()
            replies.append(Reply(code, time.perf_counter() - sent, response))
    return replies


def bucket_of(value_s: float) -> tuple[float, float]:
    """The (lower, upper] bounds of the latency bucket a value falls in."""
    lower = 0.0
    for upper in LATENCY_BUCKETS_S:
        if value_s <= upper:
            return lower, upper
        lower = upper
    return lower, math.inf


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# ------------------------------------------------------------------------------------------------ tests


def test_prometheus_p99_and_average_batch_size_match_the_clients_view(
    server: Server, prometheus: Prometheus
) -> None:
    before = server.scrape()
    replies = [r for r in send_paced(server, n=240, concurrency=4) if r.code == grpc.StatusCode.OK]
    responses = [r.response for r in replies if r.response is not None]
    n = len(responses)
    assert n >= 200, f"only {n} of 240 paced requests succeeded"

    success = f'resnet_serve_requests_total{{model="{MODEL}", outcome="success"}}'
    key = ("resnet_serve_requests_total", (("model", MODEL), ("outcome", "success"), ("version", "1")))
    expected_total = before.get(key, 0.0) + n
    wait_for(lambda: prometheus.scalar(success) == expected_total, 30, "Prometheus to scrape every request")
    assert before.get(key, 0.0) == 0, "this test must run first on its server: p99 covers all requests"

    # p99: Prometheus interpolates inside the bucket that holds the true p99 of what the server measured.
    server_s = [r.timing.total_us / 1e6 for r in responses]
    lower, upper = bucket_of(nearest_rank(server_s, 0.99))
    slack = 2e-6  # timings travel in whole microseconds
    for expr in (
        "histogram_quantile(0.99, sum by (le) "
        f'(resnet_serve_request_duration_seconds_bucket{{model="{MODEL}"}}))',
        # The dashboard's form: the rate over a window holding the whole run has the same quantile.
        "histogram_quantile(0.99, sum by (le, model) "
        f'(rate(resnet_serve_request_duration_seconds_bucket{{model="{MODEL}"}}[10m])))',
    ):
        p99 = prometheus.scalar(expr)
        assert p99 is not None and lower - slack <= p99 <= upper + slack, (expr, p99, lower, upper)
    # The client waits at least as long as the server works, so its p99 is no smaller.
    client_p99 = nearest_rank([r.client_s for r in replies], 0.99)
    assert client_p99 >= lower - slack

    # Average batch size: each response says how big its batch was; a batch of b rows answers b requests.
    sizes = [r.timing.batch_size for r in responses]
    assert all(s >= 1 for s in sizes)
    executions = sum(1 / s for s in sizes)
    assert executions == pytest.approx(round(executions), abs=1e-6)
    inferences_q = f'sum(resnet_serve_inferences_total{{model="{MODEL}"}})'
    executions_q = f'sum(resnet_serve_executions_total{{model="{MODEL}"}})'
    assert prometheus.scalar(inferences_q) == n
    assert prometheus.scalar(executions_q) == round(executions)
    average = prometheus.scalar(f"{inferences_q} / {executions_q}")
    assert average == pytest.approx(n / executions)


def test_outcome_counters_equal_what_the_client_saw(server: Server) -> None:
    before = server.scrape()
    seen: Counter[str] = Counter()

    def record(replies: list[Reply]) -> None:
        for reply in replies:
            assert reply.code in STATUS_OUTCOME, f"unexpected status {reply.code}"
            seen[STATUS_OUTCOME[reply.code]] += 1

    record(send(server, [pb.ClassifyRequest(model=MODEL, image=png(i)) for i in range(5)]))
    corrupt = [b"not an image", png(1)[:20], b""]
    record(send(server, [pb.ClassifyRequest(model=MODEL, image=data) for data in corrupt]))
    record(send(server, [pb.ClassifyRequest(model=name, image=png(0)) for name in ("nope", "x" * 300)]))
    assert (seen["invalid_input"], seen["not_found"]) == (3, 2)
    # Bursts far beyond the queue (16) and the 15 ms server timeout: some requests are refused at once,
    # some expire in the queue, some succeed; which is which is up to the scheduler, so burst until both
    # failure kinds have happened and count what the client got back.
    for _ in range(8):
        if seen["queue_full"] and seen["deadline_exceeded"]:
            break
        record(send(server, [pb.ClassifyRequest(model=MODEL, image=png(100 + i)) for i in range(96)]))
    assert seen["queue_full"] > 0 and seen["deadline_exceeded"] > 0, f"bursts produced only {dict(seen)}"

    after = server.scrape()

    def delta(model: str, version: str, outcome: str) -> float:
        key = (
            "resnet_serve_requests_total",
            tuple(sorted({"model": model, "version": version, "outcome": outcome}.items())),
        )
        return after.get(key, 0.0) - before.get(key, 0.0)

    counted = {o: delta(MODEL, "1", o) for o in STATUS_OUTCOME.values() if o != "not_found"}
    counted["not_found"] = delta(UNKNOWN_MODEL_LABEL, UNKNOWN_MODEL_LABEL, "not_found")
    counted["cancelled"] = delta(MODEL, "1", "cancelled")
    counted["backend_error"] = delta(MODEL, "1", "backend_error")
    expected = {o: float(seen[o]) for o in counted}
    assert counted == expected


def test_kserve_model_statistics_report_the_numbers_prometheus_scrapes(server: Server) -> None:
    tritonclient = pytest.importorskip("tritonclient.grpc")
    # Some traffic of its own, so the comparison never rests on zeros whatever ran before.
    assert all(r.code == grpc.StatusCode.OK for r in send_paced(server, n=8, concurrency=4))
    client = tritonclient.InferenceServerClient(server.grpc_target)
    try:
        # Statistics first, scrape second: nothing runs in between, so both see the same counters.
        stats = client.get_inference_statistics(MODEL, "1", as_json=True)["model_stats"][0]
    finally:
        client.close()
    scraped = server.scrape()
    labels = (("model", MODEL), ("version", "1"))

    def value(name: str, *extra: tuple[str, str]) -> float:
        return scraped[(name, tuple(sorted((*labels, *extra))))]

    def ns(name: str) -> int:
        return round(value(name) * 1e9)

    inference = stats["inference_stats"]
    assert int(stats["inference_count"]) == value("resnet_serve_inferences_total")
    assert int(stats["execution_count"]) == value("resnet_serve_executions_total")
    assert int(inference["success"]["count"]) == value("resnet_serve_requests_total", ("outcome", "success"))
    assert int(inference["success"]["ns"]) == ns("resnet_serve_request_duration_seconds_sum")
    assert int(inference["queue"]["ns"]) == ns("resnet_serve_queue_duration_seconds_sum")
    assert int(inference["compute_input"]["ns"]) == ns("resnet_serve_preprocess_duration_seconds_sum")
    assert int(inference["compute_infer"]["ns"]) == ns("resnet_serve_compute_duration_seconds_sum")
    failed = sum(value("resnet_serve_requests_total", ("outcome", o)) for o in FAILURES)
    assert int(inference.get("fail", {}).get("count", 0)) == failed
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    assert sum(batches.values()) == value("resnet_serve_executions_total")
    assert sum(size * n for size, n in batches.items()) == value("resnet_serve_batch_size_sum")


def test_every_dashboard_query_answers_from_a_live_server(server: Server, prometheus: Prometheus) -> None:
    assert all(r.code == grpc.StatusCode.OK for r in send_paced(server, n=8, concurrency=4))
    wait_for(
        lambda: prometheus.scalar(f'sum(resnet_serve_executions_total{{model="{MODEL}"}})'),
        30,
        "executions to be scraped",
    )
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/resnet-serve.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            if "resnet_serve_gpu_" in expr:
                continue  # no GPU here: the collector exports nothing, by design
            concrete = expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$job", ".*")
            values = [float(series["value"][1]) for series in prometheus.query(concrete)]
            assert any(math.isfinite(v) for v in values), f"panel {panel['title']!r}: no data for {concrete}"


# Panels of a Triton Grafana dashboard, written for Triton's metric names (Triton's own example dashboard
# and the usual request-rate / latency / queue panels), with the model selector filled in.
TRITON_PANELS = (
    f'nv_inference_request_success{{model="{MODEL}"}}',
    f'sum by (model) (rate(nv_inference_request_success{{model="{MODEL}"}}[1m]))',
    f'sum by (model, reason) (nv_inference_request_failure{{model="{MODEL}"}})',
    f'avg(delta(nv_inference_queue_duration_us{{model="{MODEL}"}}[1m])'
    f' / (1 + delta(nv_inference_request_success{{model="{MODEL}"}}[1m])))',
    f'rate(nv_inference_request_duration_us{{model="{MODEL}"}}[1m])'
    f' / rate(nv_inference_request_success{{model="{MODEL}"}}[1m]) / 1000',
    f'rate(nv_inference_compute_infer_duration_us{{model="{MODEL}"}}[1m]) / 1000',
    f'sum(nv_inference_count{{model="{MODEL}"}}) / sum(nv_inference_exec_count{{model="{MODEL}"}})',
    f'nv_inference_pending_request_count{{model="{MODEL}"}}',
)


def test_triton_dashboard_queries_on_nv_names_answer_with_the_same_counts(
    server: Server, prometheus: Prometheus
) -> None:
    # Traffic of its own (the 15 ms server timeout may expire some on a busy machine: counted either way).
    assert any(r.code == grpc.StatusCode.OK for r in send_paced(server, n=8, concurrency=4))
    scraped = server.scrape()
    labels = (("model", MODEL), ("version", "1"))

    def value(name: str, *extra: tuple[str, str]) -> float:
        return scraped[(name, tuple(sorted((*labels, *extra))))]

    # One scrape, two namings of the same counters: equal, durations in whole microseconds.
    assert value("nv_inference_request_success") == value(
        "resnet_serve_requests_total", ("outcome", "success")
    )
    assert value("nv_inference_count") == value("resnet_serve_inferences_total")
    assert value("nv_inference_exec_count") == value("resnet_serve_executions_total")
    for ours, triton in (
        ("request", "request"),
        ("queue", "queue"),
        ("preprocess", "compute_input"),
        ("compute", "compute_infer"),
    ):
        seconds = value(f"resnet_serve_{ours}_duration_seconds_sum")
        assert value(f"nv_inference_{triton}_duration_us") == pytest.approx(seconds * 1e6, abs=1.0)
    rejected = sum(
        value("resnet_serve_requests_total", ("outcome", o)) for o in ("queue_full", "deadline_exceeded")
    )
    assert value("nv_inference_request_failure", ("reason", "REJECTED")) == rejected
    assert rejected > 0  # the outcome test's bursts overflowed the queue

    expected = value("nv_inference_request_success")
    success = f'nv_inference_request_success{{model="{MODEL}",version="1"}}'
    wait_for(lambda: prometheus.scalar(success) == expected, 30, "Prometheus to scrape nv_inference_*")
    for expr in TRITON_PANELS:
        values = [float(series["value"][1]) for series in prometheus.query(expr)]
        assert any(math.isfinite(v) for v in values), f"no data for the Triton panel query {expr}"
