"""The SLO search: picking from a sweep and bisecting the open-loop rate."""

from __future__ import annotations

import asyncio

import numpy as np

from resnet_serve.bench.loadgen import Closed, Open, StepResult
from resnet_serve.bench.slo import best, bisect_rate, meets
from resnet_serve.bench.stats import LatencySummary


def step(load: Closed | Open, throughput: float, p99_ms: float, errors: int = 0) -> StepResult:
    latencies = np.full(100, p99_ms / 1e3)
    return StepResult(
        load=load, batch_size=1, duration_s=1.0, requests=100, throughput=throughput,
        latency=LatencySummary.of(latencies), errors={"UNAVAILABLE": errors} if errors else {},
        server=None, stable=True, windows=3, offered_rate=None, backlog=0, backlog_growth=0.0,
    )  # fmt: skip


def queueing_server(rate: float) -> StepResult:
    """p99 grows as 1/(capacity − rate), the shape of an M/M/1 queue with capacity 100/s."""
    p99 = 5.0 / max(1e-3, 1 - rate / 100.0) if rate < 100 else 1e4
    return step(Open(rate), min(rate, 100.0), p99)


def test_a_sweep_picks_the_highest_throughput_within_the_slo_and_without_errors() -> None:
    steps = [
        step(Closed(1), 100, 5),
        step(Closed(2), 180, 9),
        step(Closed(4), 250, 12),
        step(Closed(8), 260, 8, 3),
    ]
    found = best(steps, 10.0, "sweep")
    assert found["best"] == "concurrency 2" and found["throughput"] == 180
    assert best(steps, 1.0, "sweep")["best"] is None


def test_an_open_loop_step_that_falls_behind_never_meets_the_slo() -> None:
    behind = step(Open(200), 150, 5)  # answered 150 of 200/s offered
    assert behind.kept_up is False and not meets(behind, 100.0)


def test_bisection_converges_on_the_rate_where_p99_crosses_the_slo() -> None:
    # p99 = 5/(1 - r/100) ≤ 20 ms  ⇔  r ≤ 75/s.
    sweep = [queueing_server(r) for r in (20.0, 160.0)]
    tried: list[float] = []

    async def run_at(rate: float) -> StepResult:
        tried.append(rate)
        return queueing_server(rate)

    steps = asyncio.run(bisect_rate(run_at, sweep, 20.0, iterations=6))
    assert tried[0] == 90.0  # halfway between the passing 20/s and the failing 160/s
    assert all(s.phase == "slo-search" for s in steps)
    found = best(sweep + steps, 20.0, "bisection")
    assert 70.0 <= found["throughput"] <= 75.0


def test_no_search_when_the_highest_rate_already_meets_the_slo() -> None:
    async def never(rate: float) -> StepResult:
        raise AssertionError("no step should run")

    assert asyncio.run(bisect_rate(never, [queueing_server(10.0), queueing_server(30.0)], 50.0, 4)) == []
