"""The load generator: closed loop (fixed concurrency) and open loop (Poisson arrivals at a fixed rate).

Closed loop: `concurrency` workers, each sending its next request when the last one returns.
Open loop: requests are sent on a schedule that does not wait for the server. Each request's latency is
measured from its *scheduled* send time, not from when it was actually sent: if the server (or this
process) falls behind, the delay shows up in the latencies and in the backlog instead of being hidden
("coordinated omission").

A step runs warm-up, then fixed measurement windows until three consecutive windows agree (bench.stats)
or the step's time limit; its result covers the last three windows.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from resnet_serve.bench.senders import OK, UNAVAILABLE, Sender, ServerSplit, split_from_counters
from resnet_serve.bench.stats import LatencySummary, Window, stable

WINDOWS_KEPT = 3


@dataclass(frozen=True)
class Closed:
    concurrency: int

    @property
    def label(self) -> str:
        return f"concurrency {self.concurrency}"


@dataclass(frozen=True)
class Open:
    rate: float  # requests per second
    seed: int = 0

    @property
    def label(self) -> str:
        return f"rate {self.rate:g}/s"


@dataclass(frozen=True)
class Timing:
    """How long a step measures: `warmup_s`, then windows of `window_s` until stable or `max_s` has passed."""

    warmup_s: float = 2.0
    window_s: float = 2.0
    max_s: float = 30.0
    tolerance: float = 0.10
    drain_s: float = 5.0  # how long to wait for requests in flight once a step ends
    # A step ends at once (StepResult.gone) when every request of its windows failed UNAVAILABLE for this
    # long (or for max_s, if shorter): the server is gone, and the rest of the step would measure nothing.
    gone_s: float = 5.0


@dataclass(frozen=True)
class Record:
    start: float  # open loop: the scheduled send time; closed loop: the send time
    end: float
    code: str
    server: ServerSplit | None


@dataclass
class StepResult:
    load: Closed | Open
    batch_size: int
    duration_s: float  # of the kept windows
    requests: int  # successful requests in the kept windows
    throughput: float  # successful inferences per second
    latency: LatencySummary
    errors: dict[str, int]
    server: dict[str, float] | None  # mean queue/preprocess/compute ms and batch size, when reported
    stable: bool
    windows: int
    offered_rate: float | None = None  # open loop: requests scheduled per second while measuring
    sent_rate: float | None = None  # open loop: requests actually sent per second while measuring
    backlog: int | None = None  # open loop: scheduled but unanswered when measuring stopped
    backlog_growth: float | None = None  # open loop: change of that count per second over the kept windows
    max_send_lag_ms: float | None = None  # open loop: the latest a request left after its scheduled time
    latencies_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    phase: str = "sweep"
    gone_s: float = 0.0  # > 0: the step ended after this many seconds in which every request was UNAVAILABLE

    @property
    def gone(self) -> bool:
        """Whether the step ended early because the server stopped answering (Timing.gone_s)."""
        return self.gone_s > 0

    @property
    def kept_up(self) -> bool | None:
        """Open loop: answered within 5 % of the target rate, with no backlog growing by more than that.

        Requests in flight are not a backlog by themselves (Little's law: rate × latency are always in
        flight); a server that falls behind shows as a count that keeps growing.
        """
        if not isinstance(self.load, Open):
            return None
        growth = self.backlog_growth or 0.0
        return self.throughput >= 0.95 * self.load.rate * self.batch_size and growth <= 0.05 * self.load.rate


def poisson_schedule(rate: float, start: float, seed: int, block_s: float) -> Iterator[float]:
    """Send times of a Poisson process at `rate`, conditioned on its count in each block of `block_s`.

    Given its count, a Poisson process's arrivals in an interval are uniform order statistics. Fixing the
    count per block (rate × block_s, with the fractions carried over) keeps the bursts of Poisson traffic
    within a block while making the offered rate exact over every whole block, so a short measurement
    offers what was asked rather than a random amount near it.
    """
    rng = np.random.default_rng(seed)
    k = 0
    while True:
        count = _arrivals_before(rate * block_s * (k + 1)) - _arrivals_before(rate * block_s * k)
        t0 = start + k * block_s
        for offset in np.sort(rng.uniform(0.0, block_s, count)):
            yield t0 + float(offset)
        k += 1


def _arrivals_before(expected: float) -> int:
    return math.floor(expected + 1e-9)  # the epsilon keeps 0.4 × 1.25 × 2 from flooring to 0


def block_length(rate: float, window_s: float) -> float:
    """Blocks that tile each measurement window exactly, holding about 20 arrivals (at most one window)."""
    return window_s / max(1, math.floor(window_s * rate / 20.0))


class _Run:
    """The requests of one step in progress."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.records: list[Record] = []
        self.stopping = False
        self.in_flight: set[asyncio.Task[None]] = set()
        self.scheduled: list[float] = []
        self.sent: list[float] = []
        self.max_lag = 0.0

    async def one(self, start: float) -> None:
        self.sent.append(time.perf_counter())
        reply = await self.sender.send()
        self.records.append(Record(start, time.perf_counter(), reply.code, reply.server))

    async def closed_worker(self) -> None:
        while not self.stopping:
            await self.one(time.perf_counter())

    async def open_scheduler(self, load: Open, start: float, block_s: float) -> None:
        for when in poisson_schedule(load.rate, start, load.seed, block_s):
            await _sleep_until(when)
            if self.stopping:
                return
            self.scheduled.append(when)
            self.max_lag = max(self.max_lag, time.perf_counter() - when)
            task = asyncio.create_task(self.one(when))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)


async def run_step(sender: Sender, load: Closed | Open, timing: Timing) -> StepResult:
    """Run one load level until stable (or timing.max_s) and summarise the last three windows."""
    run = _Run(sender)
    start = time.perf_counter()
    if isinstance(load, Closed):
        drivers = [asyncio.create_task(run.closed_worker()) for _ in range(load.concurrency)]
        measure_start = start + timing.warmup_s
    else:
        # Windows start on block boundaries, so each window is offered exactly rate × window requests.
        block = block_length(load.rate, timing.window_s)
        drivers = [asyncio.create_task(run.open_scheduler(load, start, block))]
        measure_start = start + math.ceil(timing.warmup_s / block - 1e-9) * block
    drain_s = timing.drain_s
    unavailable_since: float | None = None  # start of the windows in which every request was UNAVAILABLE
    gone_s = 0.0
    try:
        await _sleep_until(measure_start)
        windows: list[Window] = []
        in_flight_at = [len(run.in_flight)]  # at each window boundary
        counters_at = [await sender.counters()]
        seen = len(run.records)
        while True:
            w_start = measure_start + len(windows) * timing.window_s
            w_end = w_start + timing.window_s
            await _sleep_until(w_end)
            # Records are appended as they complete, so those of this window are a prefix of the rest.
            fresh = _completed_before(run.records, seen, w_end)
            seen += len(fresh)
            windows.append(_window(fresh, w_start, w_end, sender.batch_size))
            in_flight_at.append(len(run.in_flight))
            counters_at.append(await sender.counters())
            if fresh and all(r.code == UNAVAILABLE for r in fresh):
                unavailable_since = w_start if unavailable_since is None else unavailable_since
                if w_end - unavailable_since >= min(timing.gone_s, timing.max_s):
                    gone_s = w_end - unavailable_since
                    break
            else:
                unavailable_since = None
            if stable(windows, timing.tolerance) or w_end - measure_start >= timing.max_s:
                break
        kept_from = max(0, len(windows) - WINDOWS_KEPT)
        backlog = (in_flight_at[kept_from], in_flight_at[-1]) if isinstance(load, Open) else None
        counted_split = split_from_counters(counters_at[kept_from], counters_at[-1])
        run.stopping = True
    except asyncio.CancelledError:
        drain_s = 0.0  # interrupted (Ctrl-C): no waiting for answers nobody will read
        raise
    finally:
        run.stopping = True
        await _finish(drivers, run, drain_s)
    kept = windows[-WINDOWS_KEPT:]
    result = _summarise(
        run, load, sender.batch_size, kept, backlog, stable(windows, timing.tolerance), len(windows)
    )
    if result.server is None:
        result.server = counted_split
    result.gone_s = gone_s
    return result


def _completed_before(records: list[Record], first: int, end: float) -> list[Record]:
    return list(itertools.takewhile(lambda r: r.end < end, records[first:]))


async def _sleep_until(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def _window(records: list[Record], start: float, end: float, batch_size: int) -> Window:
    ok = [r for r in records if r.code == OK]
    mean = sum(r.end - r.start for r in ok) / len(ok) if ok else 0.0
    return Window(start, end, len(ok), len(ok) * batch_size, mean)


async def _finish(drivers: list[asyncio.Task[None]], run: _Run, drain_s: float) -> None:
    """Let requests in flight finish (up to drain_s), then cancel what is left."""
    pending = [*drivers, *run.in_flight]
    if pending:
        _, still = await asyncio.wait(pending, timeout=drain_s)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)


def _summarise(
    run: _Run,
    load: Closed | Open,
    batch_size: int,
    kept: list[Window],
    backlog: tuple[int, int] | None,
    is_stable: bool,
    n_windows: int,
) -> StepResult:
    start, end = kept[0].start, kept[-1].end
    duration = end - start
    inside = [r for r in run.records if start <= r.end < end]
    ok = [r for r in inside if r.code == OK]
    errors = Counter(r.code for r in inside if r.code != OK)
    latencies = np.array([r.end - r.start for r in ok])
    result = StepResult(
        load=load,
        batch_size=batch_size,
        duration_s=duration,
        requests=len(ok),
        throughput=len(ok) * batch_size / duration if duration > 0 else 0.0,
        latency=LatencySummary.of(latencies),
        errors=dict(errors),
        server=_server_split([r.server for r in ok if r.server is not None]),
        stable=is_stable,
        windows=n_windows,
        latencies_s=latencies,
    )
    if isinstance(load, Open):
        result.offered_rate = sum(1 for t in run.scheduled if start <= t < end) / duration
        result.sent_rate = sum(1 for t in run.sent if start <= t < end) / duration
        if backlog is not None:
            result.backlog = backlog[1]
            result.backlog_growth = (backlog[1] - backlog[0]) / duration if duration > 0 else 0.0
        result.max_send_lag_ms = run.max_lag * 1e3
    return result


def _server_split(splits: list[ServerSplit]) -> dict[str, float] | None:
    if not splits:
        return None
    n = len(splits)
    return {
        "queue_ms": sum(s.queue_s for s in splits) / n * 1e3,
        "preprocess_ms": sum(s.preprocess_s for s in splits) / n * 1e3,
        "compute_ms": sum(s.compute_s for s in splits) / n * 1e3,
        "batch_size": sum(s.batch_size for s in splits) / n,
    }


def parse_concurrency(text: str) -> list[int]:
    """--concurrency: "1,2,4" → [1, 2, 4]; "LO:HI" doubles from LO and ends at HI ("1:64" → 1, 2, 4, ..., 64;
    "3:12" → 3, 6, 12; "3:3" → 3): a short sweep over a wide range. perf_analyzer's linear START:END:STEP is
    --concurrency-range (parse_concurrency_range)."""
    flag = f"--concurrency {text!r}"
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise ValueError(
                f"{flag}: LO:HI doubles from LO to HI; for START:END:STEP use --concurrency-range"
            )
        lo, hi = _levels(flag, parts, "LO:HI")
        if hi < lo:
            raise ValueError(f"{flag}: HI must be at least LO")
        levels = [lo]
        while levels[-1] * 2 < hi:
            levels.append(levels[-1] * 2)
        return levels if levels[-1] == hi else [*levels, hi]
    values = _levels(flag, [x for x in text.split(",") if x.strip()], "1,2,4 or 1:64")
    if not values:
        raise ValueError(f"{flag}: expected e.g. 1,2,4 or 1:64 (doubling)")
    return values


def parse_concurrency_range(text: str) -> list[int]:
    """--concurrency-range, as perf_analyzer: "START[:END[:STEP]]", linear, END included when a step lands on
    it ("1:4" → 1, 2, 3, 4; "2:8:3" → 2, 5, 8; "3:3" → 3; "4" → 4). END defaults to START, STEP to 1."""
    flag = f"--concurrency-range {text!r}"
    parts = text.split(":")
    if len(parts) > 3:
        raise ValueError(f"{flag}: expected START:END[:STEP], e.g. 1:16 or 4:64:4")
    values = _levels(flag, parts, "START:END[:STEP], e.g. 1:16")
    start = values[0]
    end = values[1] if len(values) > 1 else start
    step = values[2] if len(values) > 2 else 1
    if end < start:
        raise ValueError(f"{flag}: END must be at least START")
    return list(range(start, end + 1, step))


def _levels(flag: str, parts: list[str], expected: str) -> list[int]:
    """Whole numbers of at least 1, or a ValueError naming the flag and the expected form."""
    try:
        values = [int(x) for x in parts]
    except ValueError:
        raise ValueError(f"{flag}: expected {expected}") from None
    if min(values, default=1) < 1:
        raise ValueError(f"{flag}: every level must be at least 1")
    return values


def parse_rates(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--rate {text!r}: expected requests per second, e.g. 100 or 50,100,200") from None
    if not values or min(values) <= 0:
        raise ValueError(f"--rate {text!r}: every rate must be above 0")
    return values
