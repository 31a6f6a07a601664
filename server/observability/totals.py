"""The server's totals across processes: each process exports what its `ServerMetrics` counted as plain data
(`ServerMetricsState`), and the process that serves /metrics and the statistics adds every state up
(`totals_of`) into fresh `ModelMetrics`, whose families and `statistics()` are then those of one object that
recorded every event of every process (docs/metrics.md, "Totals across processes").

A process that stops reporting (a worker that died and was replaced) keeps its last counts in the totals,
with its gauges at 0 (`PeerStates`): the server's counters never go down, so Prometheus' `rate()` sees no
reset, as prometheus_client's multiprocess mode keeps a dead process's counters.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from resnet_serve.server.observability.model_metrics import MetricsState, ModelMetrics
from resnet_serve.server.observability.refusals import AccessRefusals, RefusalCount

log = logging.getLogger(__name__)

# A process silent this long is taken for gone: its counts are folded into one state, so that a worker
# restarted again and again does not leave a state per process behind.
DEPARTED_AFTER_S: Final = 300.0
DEPARTED: Final = "departed"  # the origin of the folded state


@dataclass(frozen=True)
class ServerMetricsState:
    """What one process's `ServerMetrics` has counted (`ServerMetrics.export()`), as picklable plain data."""

    origin: str  # which process: its pid and a token of its ServerMetrics (pids are reused)
    seq: int  # increases with every export of one origin, so an older state never replaces a newer one
    models: list[MetricsState]
    unknown: int  # requests for models or versions that are not served
    refusals: list[RefusalCount]

    def without_gauges(self) -> ServerMetricsState:
        """The counts of a process that no longer answers: nothing in flight or queued, nothing ready."""
        models = [dataclasses.replace(m, in_flight=0, queue_depth=0, ready=False) for m in self.models]
        return dataclasses.replace(self, models=models)


@dataclass(frozen=True)
class MetricsTotals:
    """Several processes' counts added up: new objects, never a process's own live ones (except where
    `ServerMetrics.totals()` has no peers to add: then they are its live objects, to be read only)."""

    models: dict[tuple[str, str], ModelMetrics]  # (name, version) -> the model version's totals
    unknown: int
    refusals: dict[tuple[str, str, str], int]  # (protocol, group, reason) -> refusals

    def state(self, origin: str) -> ServerMetricsState:
        return ServerMetricsState(
            origin=origin,
            seq=0,
            models=[m.export() for m in self.models.values()],
            unknown=self.unknown,
            refusals=[(*key, n) for key, n in sorted(self.refusals.items())],
        )


def totals_of(states: Iterable[ServerMetricsState]) -> MetricsTotals:
    """Add states up (pure: the states are not changed). A model version's `statistics()` and families equal
    those of one `ModelMetrics` that recorded every event the states counted."""
    models: dict[tuple[str, str], ModelMetrics] = {}
    refusals = AccessRefusals()
    unknown = 0
    for state in states:
        unknown += state.unknown
        refusals.absorb(state.refusals)
        for model in state.models:
            key = (model.name, model.version)
            merged = models.get(key)
            if merged is None:
                merged = models[key] = ModelMetrics(*key)
            merged.absorb(model)
    return MetricsTotals(models, unknown, refusals.counts())


class PeerStates:
    """The latest state of every peer process that has reported. Thread-safe.

    `update` returns the states to add up: those just reported, the latest of those that were not (with
    their gauges at 0: a process that does not answer has nothing in flight), and the folded state of the
    processes silent for `DEPARTED_AFTER_S`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[ServerMetricsState, float]] = {}  # origin -> (state, last reported)
        self._departed: ServerMetricsState | None = None
        self._folded: set[str] = set()

    def update(self, reported: Sequence[ServerMetricsState]) -> list[ServerMetricsState]:
        now = self._clock()
        with self._lock:
            for state in reported:
                if state.origin in self._folded:
                    log.warning("metrics of process %s came back after it was taken for gone", state.origin)
                    continue
                latest = self._latest.get(state.origin)
                if latest is None or latest[0].seq < state.seq:
                    self._latest[state.origin] = (state, now)
                else:  # a concurrent call's newer state is kept; this one still counts as a report
                    self._latest[state.origin] = (latest[0], now)
            gone = [origin for origin, (_, seen) in self._latest.items() if now - seen > DEPARTED_AFTER_S]
            if gone:
                folded = [self._latest.pop(origin)[0] for origin in gone]
                self._folded.update(gone)
                before = [] if self._departed is None else [self._departed]
                self._departed = totals_of([*before, *folded]).state(DEPARTED).without_gauges()
            answered = {state.origin for state in reported}
            states = [s if s.origin in answered else s.without_gauges() for s, _ in self._latest.values()]
            return states if self._departed is None else [*states, self._departed]
