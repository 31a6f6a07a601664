"""The load generator's guarantees: Poisson arrivals at an exact rate, latencies timed from the schedule
(no coordinated omission), honest backlog reports, and the window stability rule.

Fake senders sleep rather than compute, so these timings hold on a busy machine; the slow-server test uses
the gRPC fake server with a fixed service time and capacity, whose true limit is known.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from fake_server import FakeServer

from resnet_serve.bench.loadgen import (
    Closed,
    Open,
    Timing,
    block_length,
    parse_concurrency,
    parse_concurrency_range,
    parse_rates,
    poisson_schedule,
    run_step,
)
from resnet_serve.bench.senders import OK, ImageSender, Reply, Sender
from resnet_serve.bench.stats import LatencySummary, Window, stable
from resnet_serve.bench.workload import digit_pngs
from resnet_serve.client.aio import AsyncClient

SHORT = Timing(warmup_s=0.3, window_s=0.5, max_s=1.5, drain_s=3.0)


class SleepySender(Sender):
    """Answers after `service_s` of idle waiting; optionally freezes the whole event loop once."""

    def __init__(
        self, service_s: float = 0.002, freeze_after_s: float | None = None, freeze_s: float = 0.0
    ) -> None:
        self.service_s = service_s
        self.freeze_at = None if freeze_after_s is None else time.perf_counter() + freeze_after_s
        self.freeze_s = freeze_s
        self.sent = 0

    async def send(self) -> Reply:
        self.sent += 1
        if self.freeze_at is not None and time.perf_counter() >= self.freeze_at:
            self.freeze_at = None
            time.sleep(self.freeze_s)  # blocks the loop: nothing can be sent meanwhile
        await asyncio.sleep(self.service_s)
        return Reply(OK)


def arrivals(rate: float, start: float, seed: int, block_s: float, n: int) -> np.ndarray:
    return np.array([t for t, _ in zip(poisson_schedule(rate, start, seed, block_s), range(n), strict=False)])


def test_poisson_schedule_offers_the_exact_rate_with_exponential_gaps() -> None:
    times = arrivals(200.0, 10.0, 1, block_length(200.0, 1.0), 4000)
    assert np.all(np.diff(times) >= 0)
    # 20 s of arrivals at 200/s: exactly 200 in every second.
    counts = np.histogram(times, bins=np.arange(10.0, 30.0 + 1e-9, 1.0))[0]
    assert counts.tolist() == [200] * 20
    gaps = np.diff(times)
    # Exponential inter-arrival times have a coefficient of variation of 1 (a fixed cadence has 0).
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)


def test_fractional_rates_carry_over_between_blocks() -> None:
    # 1.25/s in 0.4 s blocks is half a request per block: the carry makes it one every other block.
    times = arrivals(1.25, 0.0, 0, block_length(1.25, 0.4), 10)
    assert len(times) == 10 and times[-1] == pytest.approx(8.0, abs=0.4)


def test_different_seeds_give_different_arrivals() -> None:
    assert not np.array_equal(arrivals(50.0, 0.0, 0, 0.4, 50), arrivals(50.0, 0.0, 1, 0.4, 50))


def test_open_loop_keeps_its_target_rate_when_the_server_keeps_up() -> None:
    step = asyncio.run(run_step(SleepySender(0.002), Open(200.0), SHORT))
    assert step.offered_rate == pytest.approx(200.0, rel=0.05)
    assert step.throughput == pytest.approx(200.0, rel=0.05)
    assert step.kept_up is True
    assert step.errors == {}
    assert step.latency["p50"] < 50.0


def test_a_stalled_sender_shows_up_in_latency_not_hidden_by_coordinated_omission() -> None:
    # The loop freezes for 0.4 s: requests scheduled during the freeze leave late. Their latency counts
    # from the schedule, so the tail must show about the freeze, although each answer takes 2 ms.
    sender = SleepySender(0.002, freeze_after_s=0.5, freeze_s=0.4)
    timing = Timing(warmup_s=0.2, window_s=0.5, max_s=1.5, drain_s=3.0)
    step = asyncio.run(run_step(sender, Open(100.0), timing))
    assert step.latency.max >= 300.0
    assert step.max_send_lag_ms is not None and step.max_send_lag_ms >= 300.0
    # About 40 requests fell due during the freeze: their lateness is in the tail, not dropped.
    assert step.latency["p90"] > 50.0


def test_a_server_that_cannot_keep_up_reports_its_backlog_and_growing_latency() -> None:
    # One request at a time, 20 ms each: at most 50/s. Offering 100/s must show a growing queue.
    async def scenario(target: str) -> None:
        sender = ImageSender(AsyncClient(target, retry=None), digit_pngs(8))
        try:
            step = await run_step(sender, Open(100.0), Timing(0.3, 0.5, 1.5, drain_s=0.5))
        finally:
            await sender.close()
        assert step.throughput < 60.0
        assert step.kept_up is False
        assert step.backlog is not None and step.backlog > 20
        assert step.backlog_growth is not None and step.backlog_growth > 25.0
        # Latency is queueing time, far beyond the 20 ms service time, and the server's own queue agrees.
        assert step.latency["p50"] > 100.0
        assert step.server is not None and step.server["queue_ms"] > 50.0

    with FakeServer(service_time_s=0.02, capacity=1) as server:
        asyncio.run(scenario(server.target))


def test_closed_loop_keeps_exactly_concurrency_requests_in_flight() -> None:
    class Counting(Sender):
        def __init__(self) -> None:
            self.now = 0
            self.peak = 0

        async def send(self) -> Reply:
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.005)
            self.now -= 1
            return Reply(OK)

    sender = Counting()
    step = asyncio.run(run_step(sender, Closed(3), Timing(0.1, 0.3, 0.9)))
    assert sender.peak == 3
    assert step.requests > 0 and step.backlog is None and step.kept_up is None


def test_errors_are_counted_by_status_and_left_out_of_latency() -> None:
    class Failing(Sender):
        def __init__(self) -> None:
            self.n = 0

        async def send(self) -> Reply:
            self.n += 1
            await asyncio.sleep(0.002)
            return Reply("RESOURCE_EXHAUSTED") if self.n % 2 else Reply(OK)

    step = asyncio.run(run_step(Failing(), Closed(1), Timing(0.1, 0.3, 0.9)))
    assert step.errors.get("RESOURCE_EXHAUSTED", 0) > 0
    assert step.latency.count == step.requests
    assert abs(step.errors["RESOURCE_EXHAUSTED"] - step.requests) <= 2


def window(throughput: float, latency_s: float, completed: int = 100) -> Window:
    return Window(0.0, 1.0, completed, int(throughput), latency_s)


def test_stability_needs_three_windows_agreeing_on_throughput_and_latency() -> None:
    assert not stable([window(100, 0.01), window(100, 0.01)], 0.1)
    assert stable([window(50, 0.5), window(100, 0.010), window(105, 0.0105), window(96, 0.0098)], 0.1)
    assert not stable([window(100, 0.010), window(130, 0.010), window(100, 0.010)], 0.1)
    assert not stable([window(100, 0.010), window(100, 0.013), window(100, 0.010)], 0.1)
    assert not stable([window(0, 0.0, 0)] * 3, 0.1)


def test_latency_summary_reports_every_percentile_in_milliseconds() -> None:
    summary = LatencySummary.of(np.arange(1, 1001) / 1000.0)  # 1 ms .. 1000 ms
    assert summary.count == 1000
    assert summary["p50"] == pytest.approx(500.5)
    assert summary["p99.9"] == pytest.approx(999.001)
    assert set(summary.as_dict()) == {"count", "mean", "min", "max", "p50", "p90", "p95", "p99", "p99.9"}
    assert LatencySummary.of([]).count == 0


def test_a_doubling_range_starts_at_lo_ends_at_hi_and_is_never_empty() -> None:
    assert parse_concurrency("3:12") == [3, 6, 12]
    assert parse_concurrency("3:3") == [3]
    assert parse_concurrency("1:100") == [1, 2, 4, 8, 16, 32, 64, 100]
    with pytest.raises(ValueError, match="--concurrency-range"):  # perf_analyzer's form has its own flag
        parse_concurrency("1:16:2")


def test_the_concurrency_range_is_perf_analyzers_linear_start_end_step() -> None:
    assert parse_concurrency_range("3:12") == list(range(3, 13))
    assert parse_concurrency_range("3:3") == [3]
    assert parse_concurrency_range("2:8:3") == [2, 5, 8]
    assert parse_concurrency_range("1:10:4") == [1, 5, 9]
    assert parse_concurrency_range("4") == [4]
    for bad in ("0:4", "4:2", "a:b", "1:2:3:4", "1:4:0", ""):
        with pytest.raises(ValueError, match="--concurrency-range"):
            parse_concurrency_range(bad)


def test_load_levels_parse_lists_and_power_of_two_ranges() -> None:
    assert parse_concurrency("1:64") == [1, 2, 4, 8, 16, 32, 64]
    assert parse_concurrency("3,5") == [3, 5]
    assert parse_rates("50,100.5") == [50.0, 100.5]
    for bad in ("0", "a", "8:2", ""):
        with pytest.raises(ValueError, match="--concurrency"):
            parse_concurrency(bad)
    with pytest.raises(ValueError, match="--rate"):
        parse_rates("-1")
