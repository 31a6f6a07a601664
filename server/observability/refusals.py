"""Requests refused by access control (`resnet_serve_access_refused_total`, docs/security.md): counted by
front end, protocol group and reason, exported at scrape time (by server/observability/exposition.py's
collector, with the other per-server counts, so one scrape takes every process's totals at once)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Final

from prometheus_client.core import CounterMetricFamily

# Requests refused by access control (docs/security.md), by front end, protocol group and why. Every label
# value comes from these closed sets or from server/security/restrict.py's group names, never from a request:
# no header value, token or path can create a series.
ACCESS_PROTOCOLS: Final = ("grpc", "http")
ACCESS_REFUSAL_REASONS: Final = (
    "restricted",  # a restricted protocol group without its header value: UNAVAILABLE, as Triton
    "unauthenticated",  # the image API without a valid bearer token: UNAUTHENTICATED (HTTP 401)
    "model_control",  # load/unload under --model-control-mode none: UNAVAILABLE, as Triton
)


def check_refusal(protocol: str, reason: str) -> None:
    """ValueError for a label value outside the closed sets (a caller's bug, never a client's value)."""
    if protocol not in ACCESS_PROTOCOLS or reason not in ACCESS_REFUSAL_REASONS:
        raise ValueError(f"unknown access refusal {protocol!r}/{reason!r}")


# One refusal series and its count: (protocol, group, reason, n), plain data another process can add up.
RefusalCount = tuple[str, str, str, int]


class AccessRefusals:
    """The refusal counts. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, str, str], int] = {}

    def add(self, protocol: str, group: str, reason: str, n: int = 1) -> None:
        check_refusal(protocol, reason)
        key = (protocol, group, reason)
        with self._lock:
            self._refused[key] = self._refused.get(key, 0) + n

    def counts(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._refused)

    def export(self) -> list[RefusalCount]:
        return [(*key, n) for key, n in sorted(self.counts().items())]

    def absorb(self, counts: Iterable[RefusalCount]) -> None:
        """Add another process's refusals (`export()`) to these."""
        for protocol, group, reason, n in counts:
            self.add(protocol, group, reason, n)


def refusals_family(prefix: str, counts: dict[tuple[str, str, str], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        f"{prefix}_access_refused",
        "Requests refused by access control (restricted groups, bearer tokens, model control), by front "
        "end, protocol group and reason.",
        labels=("protocol", "group", "reason"),
    )
    for labels, n in sorted(counts.items()):
        family.add_metric(list(labels), n)
    return family
