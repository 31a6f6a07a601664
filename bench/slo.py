"""The SLO search: the highest throughput whose p99 latency stays within a limit.

From a concurrency sweep it picks the best step; in open loop it bisects the offered rate below the
highest rate asked for, since latency under Poisson load rises steeply but monotonically with the rate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.loadgen import StepResult


def meets(step: StepResult, p99_ms: float) -> bool:
    """Answered without errors, kept up with its offered rate (open loop) and p99 within the limit."""
    return (
        step.requests > 0 and not step.errors and step.kept_up is not False and step.latency["p99"] <= p99_ms
    )


def best(steps: list[StepResult], p99_ms: float, method: str) -> dict[str, Any]:
    passing = [s for s in steps if meets(s, p99_ms)]
    top = max(passing, key=lambda s: s.throughput, default=None)
    return {
        "p99_ms": p99_ms,
        "method": method,
        "best": top.load.label if top else None,
        "throughput": top.throughput if top else None,
        "p99_at_best_ms": top.latency["p99"] if top else None,
        "candidates": len(steps),
    }


async def bisect_rate(
    run_at: Callable[[float], Awaitable[StepResult]],
    highest: StepResult,
    high: float,
    p99_ms: float,
    iterations: int,
) -> list[StepResult]:
    """Steps run bisecting the open-loop rate in (0, high]; `highest` is the step already run at `high`."""
    if meets(highest, p99_ms):
        return []
    steps: list[StepResult] = []
    low = 0.0
    for _ in range(iterations):
        mid = (low + high) / 2
        step = await run_at(mid)
        step.phase = "slo-search"
        steps.append(step)
        if meets(step, p99_ms):
            low = mid
        else:
            high = mid
    return steps
