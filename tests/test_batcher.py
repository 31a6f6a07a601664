"""The dynamic batcher: batch formation, delays, queue bound, deadlines, cancellation, failures, instances."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support.runtimes import RUNTIMES, runtime_backends

from resnet_serve.runtime.base import Backend, BackendInfo, TensorSpec
from resnet_serve.server.batching.batcher import BatchResult, DynamicBatcher
from resnet_serve.server.config import BatchingConfig
from resnet_serve.server.errors import ServeError
from resnet_serve.server.observability.metrics import ServerMetrics

T = TypeVar("T")
F32 = np.dtype(np.float32)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeBackend(Backend):
    """y = 2x + 1 row by row; records every batch; can be slowed, gated or made to fail."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.info = BackendInfo(
            platform="fake",
            inputs=[TensorSpec("x", F32, (-1, 2))],
            outputs=[TensorSpec("y", F32, (-1, 2))],
            max_batch_size=64,
        )
        self.delay_s = delay_s
        self.gate = gate
        self.fail = fail
        self.batches: list[np.ndarray] = []
        self.started = threading.Event()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.copy())
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("device on fire")
        return {"y": x * 2 + 1}

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def make(backends: list[FakeBackend] | FakeBackend, **config: Any) -> DynamicBatcher:
    metrics = ServerMetrics(registry=CollectorRegistry()).model("m", "1")
    listed = backends if isinstance(backends, list) else [backends]
    return DynamicBatcher("m", "1", listed, BatchingConfig(**config), metrics)


def rows(value: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 2), value, dtype=np.float32)}


async def wait_started(backend: FakeBackend) -> None:
    while not backend.started.is_set():
        await asyncio.sleep(0.001)


def test_concurrent_requests_form_batches_no_larger_than_max_batch_size() -> None:
    backend = FakeBackend(delay_s=0.01)
    batcher = make(backend, max_batch_size=4, max_queue_delay_ms=5)

    async def main() -> list[BatchResult]:
        return await asyncio.gather(*(batcher.submit(rows(i)) for i in range(20)))

    results = run(main())
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 2), 2 * i + 1, dtype=np.float32))
    assert sum(backend.sizes) == 20
    assert max(backend.sizes) > 1
    assert max(backend.sizes) <= 4
    assert {r.batch_size for r in results} <= set(backend.sizes)
    batcher.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batched_answers_equal_unbatched_answers(tiny_onnx: Path, runtime: str) -> None:
    x = np.random.default_rng(1).normal(size=(24, 1, 8, 8)).astype(np.float32)
    metrics = ServerMetrics(registry=CollectorRegistry()).model("tiny", "1")
    batcher = DynamicBatcher(
        "tiny",
        "1",
        runtime_backends(tiny_onnx, runtime),
        BatchingConfig(max_batch_size=8, max_queue_delay_us=20_000),
        metrics,
    )

    async def main() -> tuple[list[BatchResult], list[BatchResult]]:
        alone = [await batcher.submit({"input": x[i : i + 1]}) for i in range(len(x))]
        together = await asyncio.gather(*(batcher.submit({"input": x[i : i + 1]}) for i in range(len(x))))
        return alone, list(together)

    alone, together = run(main())
    assert all(r.batch_size == 1 for r in alone)
    assert max(r.batch_size for r in together) > 1
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a.outputs["logits"], t.outputs["logits"])
    batcher.close()


def test_no_request_waits_longer_than_the_delay_plus_one_batch() -> None:
    delay_s = 0.03
    backend = FakeBackend(delay_s=0.01)
    batcher = make(backend, max_batch_size=8, max_queue_delay_ms=delay_s * 1000)

    async def client(i: int) -> list[BatchResult]:
        out = []
        for j in range(4):
            await asyncio.sleep(0.003 * ((i + j) % 3))
            out.append(await batcher.submit(rows(i)))
        return out

    async def main() -> list[BatchResult]:
        lone = await batcher.submit(rows(0))
        assert lone.queue_s >= delay_s * 0.9  # a lone request waits for company, up to the delay
        per_client = await asyncio.gather(*(client(i) for i in range(6)))
        return [r for results in per_client for r in results]

    results = run(main())
    longest_compute = max(r.compute_s for r in results)
    jitter = 0.03  # thread wake-ups on a busy 2-core machine
    assert max(r.queue_s for r in results) <= delay_s + longest_compute + jitter
    assert max(backend.sizes) > 1
    batcher.close()


def test_preferred_batch_size_dispatches_without_waiting_for_the_delay() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=8, max_queue_delay_ms=2000, preferred_batch_sizes=(4,))

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(batcher.submit(rows(i)) for i in range(4)))
        return time.perf_counter() - start

    assert run(main()) < 1.0
    assert backend.sizes == [4]
    batcher.close()


def test_zero_delay_runs_a_lone_request_immediately() -> None:
    backend = FakeBackend()
    batcher = make(backend, max_queue_delay_ms=0)
    result = run(batcher.submit(rows(3)))
    assert result.batch_size == 1
    assert result.queue_s < 0.05
    batcher.close()


def test_full_queue_answers_unavailable_at_once() -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = make(backend, max_batch_size=1, max_queue_size=2)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        await wait_started(backend)  # the first request is computing; the queue is empty
        queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        with pytest.raises(ServeError) as info:
            await batcher.submit(rows(3))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert info.value.outcome == "queue_full"  # overload, counted apart from other refusals
        assert "max_queue_size=2" in info.value.message
        assert time.perf_counter() - start < 0.05
        gate.set()
        await asyncio.gather(first, *queued)

    run(main())
    assert backend.sizes == [1, 1, 1]
    batcher.close()


def test_deadline_passing_in_the_queue_drops_the_request_before_compute() -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = make(backend, max_batch_size=4)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await wait_started(backend)
        start = time.perf_counter()
        with pytest.raises(ServeError) as info:
            await batcher.submit(rows(7), timeout_s=0.05)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - start < 1.0  # answered at its deadline, not when the backend frees up
        gate.set()
        await first
        await batcher.submit(rows(2))

    run(main())
    computed = np.concatenate(backend.batches)[:, 0].tolist()
    assert 7.0 not in computed
    assert computed == [1.0, 2.0]
    batcher.close()


def test_configured_timeout_applies_without_a_client_deadline() -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = make(backend, max_batch_size=1, timeout_ms=30)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await wait_started(backend)
        with pytest.raises(ServeError) as info:
            await batcher.submit(rows(5))
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.set()
        await first  # taken into compute before its deadline: it completes although compute took longer

    run(main())
    assert backend.sizes == [1]
    batcher.close()


def test_cancelled_request_costs_no_compute() -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = make(backend, max_batch_size=4)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await wait_started(backend)
        doomed = asyncio.ensure_future(batcher.submit(rows(9)))
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 1
        doomed.cancel()
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 0
        gate.set()
        await first
        await batcher.submit(rows(2))

    run(main())
    assert np.concatenate(backend.batches)[:, 0].tolist() == [1.0, 2.0]
    batcher.close()


def test_backend_exception_fails_its_batch_with_internal_and_serving_goes_on() -> None:
    backend = FakeBackend(fail=True)
    batcher = make(backend)

    async def main() -> None:
        with pytest.raises(ServeError) as info:
            await batcher.submit(rows(1))
        assert info.value.code == grpc.StatusCode.INTERNAL
        assert "device on fire" in info.value.message
        backend.fail = False
        result = await batcher.submit(rows(2))
        assert result.outputs["y"][0, 0] == 5.0

    run(main())
    batcher.close()


def test_failure_outside_the_backend_answers_internal_and_the_worker_survives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug after compute (metrics) or anywhere in the worker must not leave requests waiting forever.
    batcher = make(FakeBackend())
    real_execute = batcher._execute
    failures = iter(["metrics", "worker"])

    def flaky_metrics(rows: int, compute_s: float) -> None:
        raise RuntimeError("metrics broke")

    def flaky_execute(*args: Any) -> None:
        raise RuntimeError("worker broke")

    async def main() -> None:
        for expected in failures:
            with monkeypatch.context() as patch:
                if expected == "metrics":
                    patch.setattr(batcher._metrics, "batch_executed", flaky_metrics)
                else:
                    patch.setattr(batcher, "_execute", flaky_execute)
                with pytest.raises(ServeError) as info:
                    await asyncio.wait_for(batcher.submit(rows(1)), 5)
                assert info.value.code == grpc.StatusCode.INTERNAL
                assert f"{expected} broke" in info.value.message
            assert batcher._execute == real_execute
            result = await asyncio.wait_for(batcher.submit(rows(2)), 5)
            assert result.outputs["y"][0, 0] == 5.0

    run(main())
    batcher.close()


def test_instances_run_batches_concurrently() -> None:
    backends = [FakeBackend(delay_s=0.3), FakeBackend(delay_s=0.3)]
    batcher = make(backends, max_batch_size=1)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2)))
        return time.perf_counter() - start

    assert run(main()) < 0.55  # one instance would need 0.6 s
    assert [b.sizes for b in backends] == [[1], [1]]
    batcher.close()


def test_multi_row_requests_are_never_split() -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = make(backend, max_batch_size=4)

    async def main() -> list[BatchResult]:
        blocker = asyncio.ensure_future(batcher.submit(rows(0)))
        await wait_started(backend)
        pending = [asyncio.ensure_future(batcher.submit(rows(v, 3))) for v in (1, 2)]
        await asyncio.sleep(0.01)
        gate.set()
        await blocker
        return list(await asyncio.gather(*pending))

    first, second = run(main())
    assert backend.sizes == [1, 3, 3]
    np.testing.assert_array_equal(first.outputs["y"], np.full((3, 2), 3.0, dtype=np.float32))
    np.testing.assert_array_equal(second.outputs["y"], np.full((3, 2), 5.0, dtype=np.float32))
    with pytest.raises(ServeError) as info:
        run(batcher.submit(rows(1, 5)))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_batch_size=4" in info.value.message
    batcher.close()


def test_inputs_that_do_not_fit_the_model_are_invalid_argument() -> None:
    batcher = make(FakeBackend())
    bad_inputs: list[dict[str, np.ndarray]] = [
        {"z": np.zeros((1, 2), np.float32)},
        {"x": np.zeros((1, 3), np.float32)},
        {"x": np.zeros((1, 2), np.float64)},
        {"x": np.zeros((0, 2), np.float32)},
    ]
    for inputs in bad_inputs:
        with pytest.raises(ServeError) as info:
            run(batcher.submit(inputs))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    batcher.close()


def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = make(backend, max_batch_size=1, max_queue_delay_ms=1000)

    async def main() -> None:
        accepted = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(3)]
        await wait_started(backend)
        batcher.close()
        with pytest.raises(ServeError) as info:
            await batcher.submit(rows(9))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert info.value.outcome == "unavailable"  # refused, not overloaded
        gate.set()
        await asyncio.gather(*accepted)

    run(main())
    assert batcher.join(5)
    assert backend.sizes == [1, 1, 1]


def test_abandon_answers_queued_requests_unavailable_and_lets_the_running_batch_finish() -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    batcher = make(backend, max_batch_size=1, max_queue_delay_ms=1000)

    async def main() -> None:
        running = asyncio.ensure_future(batcher.submit(rows(1)))
        await wait_started(backend)
        queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(3)]
        await asyncio.sleep(0)
        assert batcher.abandon("grace period over") == 3
        assert batcher.queue_depth == 0
        for future in queued:
            with pytest.raises(ServeError) as info:
                await future
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert info.value.message == "grace period over"
        with pytest.raises(ServeError):  # and nothing new is taken
            await batcher.submit(rows(9))
        gate.set()
        assert (await running).outputs["y"].tolist() == [[3.0, 3.0]]

    run(main())
    assert batcher.join(5)
    assert backend.sizes == [1]  # none of the abandoned requests was computed


def test_a_model_without_a_batch_dimension_runs_each_request_whole_and_alone() -> None:
    backend = FakeBackend(delay_s=0.01)
    backend.info.max_batch_size = 0  # Triton's max_batch_size 0: (-1, 2) is the model's own shape
    batcher = make(backend, max_batch_size=8, max_queue_delay_ms=20)

    async def main() -> list[BatchResult]:
        return await asyncio.gather(*(batcher.submit(rows(i, n=3 + i)) for i in range(4)))

    results = run(main())
    # A leading 3..6 is the model's dimension, not rows capped at one: each request is one inference, alone.
    assert sorted(backend.sizes) == [3, 4, 5, 6]
    for i, result in enumerate(results):
        assert result.batch_size == 1
        np.testing.assert_array_equal(result.outputs["y"], np.full((3 + i, 2), 2 * i + 1, dtype=np.float32))
    with pytest.raises(ServeError, match=r"must have shape \[\?, 2\], got \[3\]"):
        run(batcher.submit({"x": np.zeros(3, dtype=np.float32)}))
    batcher.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_worker_threads_run_under_sched_batch_and_the_caller_keeps_its_policy() -> None:
    before = os.sched_getscheduler(0)
    backend = FakeBackend()
    batcher = make(backend)
    try:
        run(batcher.submit(rows(1.0)))  # answered: the worker has set its policy before its first batch
        ids = [t.native_id for t in batcher._threads]
        assert [os.sched_getscheduler(i) for i in ids if i is not None] == [os.SCHED_BATCH]
        assert os.sched_getscheduler(0) == before  # per thread: the event loop's thread is not affected
    finally:
        batcher.close()
        batcher.join(5)


def test_a_waiting_worker_is_woken_only_when_a_request_can_start_a_batch_sooner() -> None:
    """Under load with a queue delay, waking the worker for every request cost the engine a context switch
    each: it is woken for the first request (it waits without a deadline then) and when a batch can go."""
    backend = FakeBackend()
    batcher = make(backend, max_batch_size=8, max_queue_delay_ms=5000, preferred_batch_sizes=(4,))
    notified: list[int] = []
    notify = batcher._cond.notify

    def counting(n: int = 1) -> None:
        notified.append(n)
        notify(n)

    batcher._cond.notify = counting  # type: ignore[method-assign]

    class Sink:
        def __init__(self) -> None:
            self.outcomes: list[Any] = []
            self.done = threading.Event()

        def deliver(self, outcomes: list[Any]) -> None:
            self.outcomes += outcomes
            if len(self.outcomes) == 4:
                self.done.set()

    sink = Sink()
    try:
        batcher.enqueue(rows(0), None, sink, 0)
        assert len(notified) == 1  # the queue was empty
        batcher.enqueue(rows(1), None, sink, 1)
        batcher.enqueue(rows(2), None, sink, 2)
        assert len(notified) == 1  # nothing the worker waits for has changed
        batcher.enqueue(rows(3), None, sink, 3)  # a preferred batch: it goes now, not in 5 s
        assert sink.done.wait(2.0)
        assert backend.sizes == [4]
        assert sorted(p.tag for p, _ in sink.outcomes) == [0, 1, 2, 3]
    finally:
        batcher.close()
        batcher.join(5)


class _Collect:
    """A Sink that keeps the outcomes and the threads they were delivered on."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []
        self.threads: list[int] = []
        self.arrived = threading.Event()

    def deliver(self, outcomes: list[Any]) -> None:
        self.outcomes += outcomes
        self.threads.append(threading.get_ident())
        self.arrived.set()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Any]:
        """The tags of the first `count` outcomes, in order of delivery, once there are that many."""
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < count and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(self.outcomes) >= count, f"{len(self.outcomes)} of {count} outcomes arrived"
        return [pending.tag for pending, _ in self.outcomes[:count]]


class _ThreadRecording(FakeBackend):
    """Records the thread of each batch and fails if two threads ever run it at once."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__(gate=gate)
        self.threads: list[int] = []
        self._busy = threading.Lock()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._busy.acquire(blocking=False), "one instance ran on two threads at once"
        try:
            self.threads.append(threading.get_ident())
            return super().infer(inputs)
        finally:
            self._busy.release()


@contextlib.contextmanager
def _lending(
    gate: threading.Event | None = None, **config: Any
) -> Iterator[tuple[_ThreadRecording, DynamicBatcher, _Collect]]:
    """A batcher over one thread-recording backend and a Sink, closed and joined at the end."""
    backend = _ThreadRecording(gate=gate)
    batcher = make(backend, **config)
    try:
        yield backend, batcher, _Collect()
    finally:
        if gate is not None:
            gate.set()
        batcher.close()
        assert batcher.join(5)


def test_a_lone_request_runs_on_the_callers_thread_when_the_batcher_is_idle() -> None:
    with _lending(max_queue_delay_ms=0) as (backend, batcher, sink):
        handle = batcher.enqueue(rows(3), None, sink, "a", inline=True)
        # answered before enqueue returned, on this thread, by the instance the worker lent
        assert sink.threads == [threading.get_ident()] and backend.threads == [threading.get_ident()]
        ((pending, result),) = sink.outcomes
        assert pending.tag == "a" and pending is handle
        assert np.array_equal(result.outputs["y"], rows(3)["x"] * 2 + 1)
        assert not batcher.withdraw(handle)  # it ran: nothing to withdraw
        assert batcher.idle
        # without inline=True it is queued for the worker, as before
        batcher.enqueue(rows(4), None, sink, "b")
        assert sink.wait_for(2) == ["a", "b"]
        assert backend.threads[1] != threading.get_ident()


def test_with_a_queue_delay_an_inline_request_still_waits_to_be_batched() -> None:
    config: dict[str, Any] = {"max_batch_size": 8, "max_queue_delay_ms": 5000, "preferred_batch_sizes": (2,)}
    with _lending(**config) as (backend, batcher, sink):
        batcher.enqueue(rows(1), None, sink, 1, inline=True)
        assert sink.outcomes == []  # queued, waiting for company
        batcher.enqueue(rows(2), None, sink, 2, inline=True)
        assert sink.arrived.wait(2)
        assert backend.sizes == [2] and backend.threads[0] != threading.get_ident()


def test_an_inline_request_does_not_pass_queued_ones_and_an_instance_never_runs_twice_at_once() -> None:
    gate = threading.Event()
    with _lending(gate, max_queue_delay_ms=0) as (backend, batcher, sink):
        batcher.enqueue(rows(0), None, sink, 0)  # the worker takes it and holds the instance at the gate
        assert backend.started.wait(2)
        batcher.enqueue(rows(1), None, sink, 1)  # queued behind it
        batcher.enqueue(rows(2), None, sink, 2, inline=True)  # something is queued: it queues too
        assert sink.outcomes == []
        gate.set()
        tags = sink.wait_for(3)
        assert sorted(tags) == [0, 1, 2] and tags[0] == 0  # first in, first answered
        assert threading.get_ident() not in backend.threads


def test_join_waits_for_an_instance_lent_to_a_callers_thread() -> None:
    gate = threading.Event()
    backend = _ThreadRecording(gate=gate)
    batcher = make(backend, max_queue_delay_ms=0)
    sink = _Collect()
    caller = threading.Thread(target=lambda: batcher.enqueue(rows(5), None, sink, "x", inline=True))
    caller.start()
    try:
        assert backend.started.wait(2)  # computing on the caller's thread, held at the gate
        batcher.close()
        assert not batcher.join(0.2)  # the worker thread has stopped, but the lent instance is busy
        with pytest.raises(ServeError):  # closed: refused, lent or not
            batcher.enqueue(rows(6), None, sink, "y", inline=True)
    finally:
        gate.set()
        caller.join(5)
    assert batcher.join(5)
    assert [p.tag for p, _ in sink.outcomes] == ["x"]


def test_while_its_instance_is_lent_the_worker_leaves_the_queue_whole_so_the_bound_holds() -> None:
    # The worker used to take the next request out of the queue and then wait for the lent instance: a place
    # freed that no compute had freed, so one request more than max_queue_size was admitted.
    gate = threading.Event()
    backend = _ThreadRecording(gate=gate)
    batcher = make(backend, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    sink = _Collect()
    caller = threading.Thread(target=lambda: batcher.enqueue(rows(0), None, sink, 0, inline=True))
    caller.start()
    try:
        assert backend.started.wait(2)  # computing on the caller's thread, held at the gate
        batcher.enqueue(rows(1), None, sink, 1)
        batcher.enqueue(rows(2), None, sink, 2)
        time.sleep(0.2)  # time for the worker to take one out, as it did
        assert batcher.queue_depth == 2
        with pytest.raises(ServeError) as info:  # full: two queued, one computing
            batcher.enqueue(rows(3), None, sink, 3)
        assert info.value.outcome == "queue_full"
    finally:
        gate.set()
        caller.join(5)
    assert sorted(sink.wait_for(3)) == [0, 1, 2]  # and the queued ones run once the instance is back
    batcher.close()
    assert batcher.join(5)
