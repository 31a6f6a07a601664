"""The staged search, its time budget and its resumable state.

Stages, each built from the results of the ones before:
1. runtime × precision: every variant that passed parity, one instance on every core, batches up to 8;
2. instances × threads: the two best variants, every split of the cores into instances × threads;
3. batching: the best so far, every max batch (up to the concurrency) × queue delay;
4. confirm: the three best candidates that meet the SLO, measured once more (on a shared machine one
   measurement can be lucky; the choice is made on the mean of both).
"Best" ranks candidates that meet the SLO by throughput, ahead of those that do not (ranked by p99), so a
search that starts above the SLO moves towards settings that bring the latency down.

The state is one JSON line per measurement in the output folder, keyed by the model files' hashes and the
load settings: a run stopped by its budget (or Ctrl-C) resumes where it stopped, re-using what it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_serve.bench.tune.candidates import (
    DELAYS_MS,
    Candidate,
    Variant,
    batch_sizes,
    first,
    splits,
)
from resnet_serve.bench.tune.measure import Measurement, Measurer

DEFAULT_ESTIMATE_S = 30.0  # before the first measurement: a server start plus two load steps
CONFIRMED = 3


def meets(m: Measurement, slo_p99_ms: float) -> bool:
    return not m.failed and m.errors == 0 and m.throughput > 0 and m.p99_ms <= slo_p99_ms


@dataclass
class Scored:
    """A candidate's measurements, summarised: throughput and p99 are the means over its measurements."""

    candidate: Candidate
    runs: list[Measurement]
    slo_p99_ms: float

    @property
    def throughput(self) -> float:
        return sum(m.throughput for m in self.runs) / len(self.runs)

    @property
    def p99_ms(self) -> float:
        return sum(m.p99_ms for m in self.runs) / len(self.runs)

    @property
    def failed(self) -> str:
        return next((m.failed for m in self.runs if m.failed), "")

    @property
    def meets(self) -> bool:
        return all(meets(m, self.slo_p99_ms) for m in self.runs)

    def rank(self) -> tuple[bool, float]:
        return (self.meets, self.throughput if self.meets else -self.p99_ms)


class State:
    """Measurements of earlier runs with the same signature (model files and load settings), kept as JSON
    lines; a line from another signature is ignored, a torn last line (a killed run) too."""

    def __init__(self, path: Path, signature: dict[str, Any], fresh: bool) -> None:
        self.path = path
        self.signature = signature
        self.saved: dict[str, list[Measurement]] = {}
        if fresh:
            path.unlink(missing_ok=True)
        elif path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    if row.get("signature") == signature:
                        m = Measurement.from_json(row["measurement"])
                        self.saved.setdefault(self._slot(m.candidate.key, m.stage), []).append(m)
                except (ValueError, KeyError, TypeError):
                    continue

    @staticmethod
    def _slot(key: str, stage: str) -> str:
        return f"{stage}:{key}"

    def take(self, candidate: Candidate, stage: str) -> Measurement | None:
        """A saved measurement of this candidate in this stage, once each."""
        saved = self.saved.get(self._slot(candidate.key, stage))
        return saved.pop(0) if saved else None

    def add(self, m: Measurement) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One line per append: a run killed mid-write leaves at most one torn line, which loading skips.
        with self.path.open("a+b") as f:
            if f.tell() > 0:
                f.seek(-1, 2)
                if f.read(1) != b"\n":  # a torn line of a killed run: start on a line of our own
                    f.write(b"\n")
            f.write((json.dumps({"signature": self.signature, "measurement": m.to_json()}) + "\n").encode())


@dataclass
class Outcome:
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[Candidate] = field(default_factory=list)  # planned but not measured: the budget ran out
    resumed: int = 0  # measurements taken from an earlier run's state


class Search:
    def __init__(
        self,
        measurer: Measurer,
        state: State,
        slo_p99_ms: float,
        budget_s: float,
        cores: int,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        on_measured: Callable[[Measurement, int, int], None] | None = None,
    ) -> None:
        self.measurer = measurer
        self.state = state
        self.slo = slo_p99_ms
        self.budget_s = budget_s
        self.cores = cores
        self.concurrency = concurrency
        self.clock = clock
        self.on_measured = on_measured
        self.outcome = Outcome()
        self._started = clock()
        self._spent: list[float] = []
        self._planned = 0

    def run(self, variants: list[Variant]) -> Outcome:
        stage1 = [first(v, self.cores, self.concurrency) for v in variants]
        self._planned = (
            len(stage1)
            + 2 * len(splits(self.cores))
            + 2 * len(DELAYS_MS) * len(batch_sizes(self.concurrency))
            + CONFIRMED
        )
        self._stage("runtime", stage1)
        top_variants = []
        for s in self.ranked():
            if s.candidate.variant not in top_variants:
                top_variants.append(s.candidate.variant)
        stage2 = [
            Candidate(v.runtime, v.precision, str(v.file), i, t, c.max_batch, c.delay_ms)
            for v, c in ((v, first(v, self.cores, self.concurrency)) for v in top_variants[:2])
            for i, t in splits(self.cores)
        ]
        self._stage("instances", stage2)
        best = self.best_any()
        if best is not None:
            b = best.candidate
            stage3 = [
                Candidate(b.runtime, b.precision, b.file, b.instances, b.threads, size, delay)
                for size in batch_sizes(self.concurrency)
                for delay in (DELAYS_MS if size > 1 else (0.0,))
            ]
            self._stage("batching", stage3)
        confirm = [s.candidate for s in self.ranked() if s.meets][:CONFIRMED]
        self._stage("confirm", confirm, again=True)
        return self.outcome

    def _stage(self, stage: str, candidates: Iterable[Candidate], again: bool = False) -> None:
        done = {m.candidate.key for m in self.outcome.measurements}
        for candidate in candidates:
            if candidate.key in done and not again:
                continue
            done.add(candidate.key)
            saved = self.state.take(candidate, stage)
            if saved is not None:
                self.outcome.resumed += 1
                self._record(saved)
                continue
            estimate = sum(self._spent) / len(self._spent) if self._spent else DEFAULT_ESTIMATE_S
            # Every run measures at least one candidate, so a budget shorter than one still makes progress.
            if self._spent and self.clock() - self._started + estimate > self.budget_s:
                self.outcome.skipped.append(candidate)
                continue
            m = self.measurer.measure(candidate, stage)
            self._spent.append(m.seconds)
            self.state.add(m)
            self._record(m)

    def _record(self, m: Measurement) -> None:
        self.outcome.measurements.append(m)
        if self.on_measured is not None:
            self.on_measured(
                m, len(self.outcome.measurements), max(self._planned, len(self.outcome.measurements))
            )

    def scored(self) -> list[Scored]:
        by_key: dict[str, Scored] = {}
        for m in self.outcome.measurements:
            s = by_key.setdefault(m.candidate.key, Scored(m.candidate, [], self.slo))
            s.runs.append(m)
        return list(by_key.values())

    def ranked(self) -> list[Scored]:
        return sorted((s for s in self.scored() if not s.failed), key=lambda s: s.rank(), reverse=True)

    def best_any(self) -> Scored | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None


@dataclass(frozen=True)
class Choice:
    winner: Scored | None
    fastest: Scored | None
    bound_by: str  # which constraint decided, in words


def choose(scored: list[Scored], slo_p99_ms: float) -> Choice:
    """The fastest candidate that meets the SLO, and which constraint bound the choice."""
    measured = [s for s in scored if not s.failed and s.throughput > 0]
    fastest = max(measured, key=lambda s: s.throughput, default=None)
    passing = [s for s in measured if s.meets]
    winner = max(passing, key=lambda s: s.throughput, default=None)
    if fastest is None:
        failed = next((s.failed for s in scored if s.failed), "")
        return Choice(None, None, f"nothing could be measured ({failed or 'no candidate ran'})")
    if winner is None:
        lowest = min(measured, key=lambda s: s.p99_ms)
        return Choice(
            None,
            fastest,
            f"the SLO: no candidate meets p99 ≤ {slo_p99_ms:g} ms (lowest p99 {lowest.p99_ms:.1f} ms, "
            f"{lowest.candidate.key}); raise the SLO or lower --concurrency",
        )
    if winner is fastest:
        return Choice(
            winner,
            fastest,
            f"throughput: the fastest candidate measured meets the SLO (p99 {winner.p99_ms:.1f} ms ≤ "
            f"{slo_p99_ms:g} ms)",
        )
    cost = 1 - winner.throughput / fastest.throughput
    return Choice(
        winner,
        fastest,
        f"the SLO: the fastest candidate ({fastest.candidate.key}, {fastest.throughput:.1f}/s) has p99 "
        f"{fastest.p99_ms:.1f} ms > {slo_p99_ms:g} ms; meeting it costs {cost:.0%} of the throughput",
    )
