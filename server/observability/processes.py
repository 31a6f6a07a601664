"""Each process of the server by role (`resnet_serve_process_cpu_seconds_total{role, pid}`,
`resnet_serve_process_resident_memory_bytes{role, pid}`): the CPU time and memory of the engine and of every
worker, read from /proc at scrape time, so one scrape shows where the server's CPU goes (docs/metrics.md).

prometheus_client's own `process_*` families describe only the process that serves /metrics; these take
their processes from a callable, which the server answers with the processes it runs now. A process that
has gone by the time it is read is left out of that scrape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

ProcessesSource = Callable[[], Sequence[tuple[str, int]]]  # -> [(role, pid), ...]

_LABELS: Final = ("role", "pid")


def _sysconf(name: str, fallback: int) -> int:
    try:
        return os.sysconf(name)
    except (ValueError, OSError):  # not a POSIX system: there is no /proc to read either
        return fallback


CLOCK_TICKS: Final = _sysconf("SC_CLK_TCK", 100)
PAGE_SIZE: Final = _sysconf("SC_PAGESIZE", 4096)


def process_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds (user + system) and resident bytes of a process, or None if it is not there (gone, or a
    system without /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
        with open(f"/proc/{pid}/statm", "rb") as statm_file:
            statm = statm_file.read()
    except OSError:  # FileNotFoundError, or ProcessLookupError while the process is being reaped
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses itself: the fields
    # after it start after the last ')'. utime and stime are fields 14 and 15 (proc(5)).
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    resident_pages = int(statm.split()[1])
    return (utime + stime) / CLOCK_TICKS, resident_pages * PAGE_SIZE


class ProcessesCollector(Collector):
    """The role-labelled CPU and memory families of the processes `source` names at each scrape."""

    def __init__(self, prefix: str, source: ProcessesSource) -> None:
        self._prefix = prefix
        self._source = source

    def describe(self) -> list[Metric]:
        return list(self._families([]))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._source())

    def _families(self, processes: Sequence[tuple[str, int]]) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            f"{self._prefix}_process_cpu_seconds",
            "CPU time (user and system) of each of the server's processes, by role.",
            labels=_LABELS,
        )
        memory = GaugeMetricFamily(
            f"{self._prefix}_process_resident_memory_bytes",
            "Resident memory of each of the server's processes, by role.",
            labels=_LABELS,
        )
        for role, pid in processes:
            usage = process_usage(pid)
            if usage is None:
                continue
            seconds, resident = usage
            cpu.add_metric([role, str(pid)], seconds)
            memory.add_metric([role, str(pid)], resident)
        yield from (cpu, memory)
