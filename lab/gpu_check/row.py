"""One row of the report: a (model, backend, precision) with its parity verdict and its timings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    model: str
    backend: str
    precision: str
    reference: str = ""
    rel_error: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    parity: str = ""  # "pass", "FAIL", "info" or the reason it was skipped
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)  # batch -> img/s, p50/p99 ms
    served: dict[str, dict[str, float]] = field(default_factory=dict)  # concurrency -> img/s, p50/p99 ms
    notes: list[str] = field(default_factory=list)
