"""The SLO search: the highest throughput whose p99 latency stays within a limit.

From a concurrency sweep it picks the best step; in open loop it bisects the offered rate between the
sweep's rates, since latency under Poisson load rises steeply but monotonically with the rate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from resnet_serve.bench.loadgen import Open, StepResult


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
    run_at: Callable[[float], Awaitable[StepResult]], sweep: list[StepResult], p99_ms: float, iterations: int
) -> list[StepResult]:
    """Steps run while bisecting the open-loop rate between the sweep's best passing and worst failing rates.

    Returns no steps when the highest rate of the sweep already meets the SLO (there is nothing to search
    below it; ask for a higher --rate to search further).
    """
    rated = [(s.load.rate, meets(s, p99_ms)) for s in sweep if isinstance(s.load, Open)]
    low = max((rate for rate, ok in rated if ok), default=0.0)
    high = min((rate for rate, ok in rated if not ok and rate > low), default=None)
    if high is None:
        return []
    steps: list[StepResult] = []
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
