"""The server's totals across processes: events recorded by several `ServerMetrics` (one per process) and
added up by the one that serves /metrics read exactly as if one `ServerMetrics` had recorded them all, in
`statistics()`, in our families and Triton's, in the refusals and the unknown-model count."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import types
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support.metrics import Samples, exposed_samples

from resnet_serve.server.observability import model_metrics
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.observability.model_metrics import MetricsState, ModelMetrics
from resnet_serve.server.observability.refusals import ACCESS_PROTOCOLS, ACCESS_REFUSAL_REASONS
from resnet_serve.server.observability.totals import (
    DEPARTED,
    DEPARTED_AFTER_S,
    PeerStates,
    ServerMetricsState,
    totals_of,
)
from resnet_serve.server.outcomes import REQUEST_OUTCOMES

MODELS = (("a", "1"), ("a", "2"), ("b", "1"))
PROCESSES = 3  # process 0 serves the totals (the engine); 1 and 2 are its peers (workers)

durations = st.one_of(st.none(), st.floats(0, 3))
events = st.lists(
    st.tuples(
        st.integers(0, PROCESSES - 1),  # the process that records it
        st.one_of(
            st.tuples(
                st.just("request"),
                st.sampled_from(MODELS),
                st.sampled_from(REQUEST_OUTCOMES),
                st.floats(0, 20),
                durations,
                durations,
                durations,
                st.integers(1, 8),
            ),
            st.tuples(st.just("batch"), st.sampled_from(MODELS), st.integers(1, 300), st.floats(0, 1)),
            st.tuples(
                st.just("refused"),
                st.sampled_from(ACCESS_PROTOCOLS),
                st.sampled_from(("inference", "model-repository")),
                st.sampled_from(ACCESS_REFUSAL_REASONS),
            ),
            st.tuples(st.just("unknown")),
            st.tuples(st.just("in_flight"), st.sampled_from(MODELS)),
        ),
    ),
    max_size=60,
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The wall clock the metrics stamp `last_inference_ms` with, set by the test."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(model_metrics, "time", types.SimpleNamespace(time=lambda: now[0]))
    yield now


def record(metrics: ServerMetrics, event: tuple[Any, ...]) -> None:
    kind, *args = event
    if kind == "request":
        (name, version), outcome, total, queue, preprocess, compute, rows = args
        metrics.model(name, version).request_done(
            outcome, total, queue_s=queue, preprocess_s=preprocess, compute_s=compute, inferences=rows
        )
    elif kind == "batch":
        (name, version), size, compute = args
        metrics.model(name, version).batch_executed(size, compute)
    elif kind == "refused":
        metrics.access_refused(*args)
    elif kind == "unknown":
        metrics.unknown_model("nope")
    else:
        (name, version) = args[0]
        metrics.model(name, version).in_flight().__enter__()  # still in flight when the totals are read


def ours_and_tritons(metrics: ServerMetrics) -> Samples:
    samples = exposed_samples(metrics.render().decode())
    return {k: v for k, v in samples.items() if k[0].startswith(("resnet_serve_", "nv_inference_"))}


def split_and_whole(
    history: list[tuple[int, tuple[Any, ...]]], now: list[float]
) -> tuple[list[ServerMetrics], ServerMetrics]:
    processes = [ServerMetrics(registry=CollectorRegistry()) for _ in range(PROCESSES)]
    whole = ServerMetrics(registry=CollectorRegistry())
    for i, (process, event) in enumerate(history):
        now[0] = 1_800_000_000.0 + i * 0.25
        record(processes[process], event)
        record(whole, event)
    # Only the engine has queues, readiness and load times.
    for metrics in (processes[0], whole):
        metrics.model("a", "1").set_queue_depth(3)
        metrics.model("a", "1").set_ready(True)
        metrics.model("a", "1").set_load_time(1.5)
    return processes, whole


@settings(max_examples=80, deadline=None)
@given(history=events)
def test_totals_of_events_split_across_processes_equal_one_process_recording_them_all(
    history: list[tuple[int, tuple[Any, ...]]],
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        now = [0.0]
        patch.setattr(model_metrics, "time", types.SimpleNamespace(time=lambda: now[0]))
        processes, whole = split_and_whole(history, now)
    engine, *workers = processes
    engine_before = (
        [m.export() for m in engine.models()],
        engine.access_refusals(),
        engine.unknown_model_count,
    )
    engine.set_peers(lambda: [w.export() for w in workers])

    totals = engine.totals()
    for key, model in totals.models.items():
        assert model.statistics() == whole.model(*key).statistics(), key
    assert set(totals.models) == {(m.name, m.version) for m in whole.models()}
    assert ours_and_tritons(engine) == ours_and_tritons(whole)
    assert engine.access_refusals() == whole.access_refusals()
    assert engine.unknown_model_count == whole.unknown_model_count
    # Adding up built new objects: the engine's own counts are as they were.
    engine.set_peers(None)
    assert ([m.export() for m in engine.models()], engine.access_refusals(), engine.unknown_model_count) == (
        engine_before
    )


def test_the_statistics_rpc_can_add_up_states_it_gathered_itself(clock: list[float]) -> None:
    engine, worker = ServerMetrics(registry=CollectorRegistry()), ServerMetrics(registry=CollectorRegistry())
    engine.model("m", "1").batch_executed(4, 0.002)
    worker.model("m", "1").request_done("success", 0.004, queue_s=0.001, compute_s=0.002, inferences=4)
    # No source: `totals(peers)` adds what async code gathered, and blocks on nothing.
    stats = engine.totals([worker.export()]).models["m", "1"].statistics()
    assert (stats.success.count, stats.inference_count, stats.execution_count) == (1, 4, 1)
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(4, 1)]
    # Without peers the engine's own counts are exported, untouched.
    assert engine.model("m", "1").statistics().success.count == 0


def test_gauges_add_up_as_the_processes_they_come_from() -> None:
    engine = ModelMetrics("m", "1")
    engine.set_ready(False)
    engine.set_load_time(2.0)
    engine.set_queue_depth(5)
    worker = ModelMetrics("m", "1")
    worker.set_ready(True)
    worker.set_load_time(0.5)
    worker.set_queue_depth(2)
    with worker.in_flight(), worker.in_flight():
        engine.absorb(worker.export())
    snapshot = engine.snapshot()
    assert (snapshot.ready, snapshot.load_s, snapshot.queue_depth, snapshot.in_flight) == (True, 2.0, 7, 2)


def test_last_inference_is_the_latest_of_any_process(clock: list[float]) -> None:
    early, late = ModelMetrics("m", "1"), ModelMetrics("m", "1")
    late.request_done("success", 0.001)
    clock[0] -= 60
    early.request_done("success", 0.001)
    early.absorb(late.export())
    assert early.statistics().last_inference_ms == int(1_800_000_000.0 * 1000)


def test_a_state_is_plain_data_that_survives_pickling_and_asdict() -> None:
    metrics = ServerMetrics(registry=CollectorRegistry())
    metrics.model("m", "1").request_done("success", 0.003, queue_s=0.001, compute_s=0.001)
    metrics.model("m", "1").batch_executed(2, 0.001)
    metrics.access_refused("grpc", "inference", "restricted")
    metrics.unknown_model("x")
    state = metrics.export()
    assert pickle.loads(pickle.dumps(state)) == state
    model = state.models[0]
    assert MetricsState(**dataclasses.asdict(model)) == model
    rebuilt = ServerMetricsState(**{**dataclasses.asdict(state), "models": [model]})
    assert rebuilt == state
    assert state.refusals == [("grpc", "inference", "restricted", 1)] and state.unknown == 1


def test_states_of_another_model_version_or_layout_are_refused() -> None:
    state = ModelMetrics("m", "1").export()
    with pytest.raises(ValueError, match="cannot add the metrics of m/1 to m/2"):
        ModelMetrics("m", "2").absorb(state)
    with pytest.raises(ValueError, match="bucket counts"):
        ModelMetrics("m", "1").absorb(dataclasses.replace(state, batch_counts=[0, 1]))


def worker_with(requests: int) -> ServerMetrics:
    worker = ServerMetrics(registry=CollectorRegistry())
    for _ in range(requests):
        worker.model("m", "1").request_done("success", 0.001)
    worker.model("m", "1").in_flight().__enter__()
    return worker


def test_a_worker_that_stops_answering_keeps_its_counts_and_loses_its_gauges() -> None:
    engine = ServerMetrics(registry=CollectorRegistry())
    live, dying = worker_with(2), worker_with(3)
    answering = [live, dying]
    engine.set_peers(lambda: [w.export() for w in answering])

    def successes_and_in_flight() -> tuple[float, float]:
        samples = exposed_samples(engine.render().decode())
        labels = (("model", "m"), ("version", "1"))
        success = samples[
            "resnet_serve_requests_total", (("model", "m"), ("outcome", "success"), ("version", "1"))
        ]
        return success, samples["resnet_serve_requests_in_flight", labels]

    assert successes_and_in_flight() == (5, 2)
    answering.remove(dying)  # killed: its replacement is a new process, with new counts
    answering.append(worker_with(1))
    assert successes_and_in_flight() == (6, 2)  # the counter did not go down: no reset for rate()


def test_a_peer_silent_for_long_is_folded_into_one_departed_state() -> None:
    now = [0.0]
    peers = PeerStates(clock=lambda: now[0])
    first, second, live = worker_with(1).export(), worker_with(2).export(), worker_with(4)
    peers.update([first, second, live.export()])
    now[0] = DEPARTED_AFTER_S + 1
    states = peers.update([live.export()])
    assert [s.origin for s in states] == [live.export().origin, DEPARTED]
    totals = totals_of(states).models["m", "1"]
    assert totals.statistics().success.count == 7
    assert totals.snapshot().in_flight == 1  # only the live worker's


def test_an_older_state_of_a_peer_never_replaces_a_newer_one() -> None:
    worker = worker_with(1)
    older = worker.export()
    worker.model("m", "1").request_done("success", 0.001)
    newer = worker.export()
    peers = PeerStates()
    peers.update([newer])
    (kept,) = peers.update([older])  # a concurrent scrape that asked earlier, answering later
    assert totals_of([kept]).models["m", "1"].statistics().success.count == 2


def test_a_failing_peers_source_serves_their_last_counts(caplog: pytest.LogCaptureFixture) -> None:
    engine, worker = ServerMetrics(registry=CollectorRegistry()), worker_with(3)
    answers: list[Any] = [[worker.export()], OSError("worker 2 does not answer")]

    def source() -> list[ServerMetricsState]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    engine.set_peers(source)
    assert engine.totals().models["m", "1"].statistics().success.count == 3
    with caplog.at_level(logging.WARNING, logger="resnet_serve.server.observability.metrics"):
        assert engine.totals().models["m", "1"].statistics().success.count == 3
    assert "metrics of peer processes unavailable" in caplog.text


def test_metrics_endpoint_serves_the_totals_asking_peers_from_its_thread() -> None:
    engine, worker = ServerMetrics(registry=CollectorRegistry()), worker_with(2)
    engine.model("m", "1").request_done("success", 0.001)
    engine.set_peers(lambda: [worker.export()])
    port = engine.start_http_server("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            body = answer.read().decode()
    finally:
        engine.stop_http_server()
    samples = exposed_samples(body)
    assert samples["nv_inference_request_success", (("model", "m"), ("version", "1"))] == 3


def test_without_peers_totals_are_the_process_own_objects() -> None:
    metrics = ServerMetrics(registry=CollectorRegistry())
    model = metrics.model("m", "1")
    assert metrics.totals().models == {("m", "1"): model}
    assert metrics.totals().models["m", "1"] is model
