"""Latency percentiles, per-window summaries and the stability rule that ends a measurement.

The stability rule is perf_analyzer's: measure in fixed windows and stop once three consecutive windows
agree on throughput and mean latency within a tolerance, so a result is neither a warm-up transient nor
a lucky window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def percentile_key(p: float) -> str:
    """ "p50", "p99", "p99.9": the JSON/CSV key of a percentile."""
    return f"p{p:g}"


@dataclass(frozen=True)
class LatencySummary:
    """Latencies in milliseconds; all zero when there were no samples."""

    count: int
    mean: float
    min: float
    max: float
    percentiles: dict[str, float]

    @classmethod
    def of(cls, latencies_s: Sequence[float] | np.ndarray) -> LatencySummary:
        ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
        if ms.size == 0:
            return cls(0, 0.0, 0.0, 0.0, {percentile_key(p): 0.0 for p in PERCENTILES})
        values = np.percentile(ms, PERCENTILES)
        return cls(
            count=int(ms.size),
            mean=float(ms.mean()),
            min=float(ms.min()),
            max=float(ms.max()),
            percentiles={percentile_key(p): float(v) for p, v in zip(PERCENTILES, values, strict=True)},
        )

    def __getitem__(self, key: str) -> float:
        return self.percentiles[key]

    def as_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "mean": self.mean, "min": self.min, "max": self.max, **self.percentiles}


@dataclass(frozen=True)
class Window:
    """One measurement window: what completed within [start, end)."""

    start: float
    end: float
    completed: int  # successful requests
    inferences: int  # successful images/tensor rows (a batch request counts its batch size)
    mean_latency_s: float

    @property
    def throughput(self) -> float:
        """Inferences per second."""
        return self.inferences / (self.end - self.start) if self.end > self.start else 0.0


def stable(windows: Sequence[Window], tolerance: float, needed: int = 3) -> bool:
    """True when the last `needed` windows lie within `tolerance` of their mean (throughput and latency).

    Windows with no completions never count as stable: a stalled server must not look like a steady one.
    """
    if len(windows) < needed:
        return False
    last = windows[-needed:]
    if any(w.completed == 0 for w in last):
        return False
    for values in ([w.throughput for w in last], [w.mean_latency_s for w in last]):
        centre = sum(values) / len(values)
        if centre <= 0 or any(abs(v - centre) > tolerance * centre for v in values):
            return False
    return True
