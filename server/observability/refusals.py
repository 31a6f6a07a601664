"""Requests refused by access control (`resnet_serve_access_refused_total`, docs/security.md): counted by
front end, protocol group and reason, exported at scrape time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

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


class AccessRefusals(Collector):
    """The refusal counts, and their family at scrape time. Thread-safe."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
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

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{self._prefix}_access_refused",
            "Requests refused by access control (restricted groups, bearer tokens, model control), by front "
            "end, protocol group and reason.",
            labels=("protocol", "group", "reason"),
        )
        for labels, n in sorted(self.counts().items()):
            family.add_metric(list(labels), n)
        yield family
