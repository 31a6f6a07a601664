"""Each of the server's processes exports its CPU time and resident memory by role
(`resnet_serve_process_cpu_seconds_total{role, pid}`, `resnet_serve_process_resident_memory_bytes`), read from
/proc at scrape time; a process that has gone is left out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.metrics import exposed_samples

from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.observability.processes import process_usage

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")

CPU = "resnet_serve_process_cpu_seconds_total"
MEMORY = "resnet_serve_process_resident_memory_bytes"


def gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its /proc entry is gone
    return child.pid


def test_own_process_reads_as_prometheus_clients_process_collector_reads_it() -> None:
    metrics = ServerMetrics(registry=CollectorRegistry())
    metrics.add_processes(lambda: [("engine", os.getpid())])
    sum(i * i for i in range(200_000))  # some CPU time to read
    samples = exposed_samples(metrics.render().decode())
    labels = (("pid", str(os.getpid())), ("role", "engine"))
    # prometheus_client reads /proc/self in the same scrape: the same process, an independent reader.
    assert samples[CPU, labels] == pytest.approx(samples["process_cpu_seconds_total", ()], abs=0.05)
    assert samples[CPU, labels] > 0
    assert samples[MEMORY, labels] == pytest.approx(samples["process_resident_memory_bytes", ()], rel=0.1)


def test_a_process_that_has_gone_is_skipped_and_the_families_stay() -> None:
    metrics = ServerMetrics(registry=CollectorRegistry())
    dead = gone_pid()
    metrics.add_processes(lambda: [("worker", dead), ("engine", os.getpid())])
    text = metrics.render().decode()
    assert f'pid="{dead}"' not in text
    assert f'{CPU}{{pid="{os.getpid()}",role="engine"}}' in text
    assert f"# TYPE {MEMORY} gauge" in text
    assert "# TYPE resnet_serve_process_cpu_seconds_total counter" in text
    assert process_usage(dead) is None


def test_a_command_name_with_spaces_and_parentheses_is_read_past() -> None:
    comm = Path(f"/proc/{os.getpid()}/comm")
    before = comm.read_text()
    comm.write_text("a) 1 2 (c")  # fields of its own, were /proc/<pid>/stat split on spaces
    try:
        metrics = ServerMetrics(registry=CollectorRegistry())
        metrics.add_processes(lambda: [("engine", os.getpid())])
        samples = exposed_samples(metrics.render().decode())
    finally:
        comm.write_text(before)
    labels = (("pid", str(os.getpid())), ("role", "engine"))
    assert samples[CPU, labels] == pytest.approx(samples["process_cpu_seconds_total", ()], abs=0.05)
    assert samples[MEMORY, labels] == pytest.approx(samples["process_resident_memory_bytes", ()], rel=0.1)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) missing")
def test_promtool_finds_nothing_to_say_about_the_process_families() -> None:
    metrics = ServerMetrics(registry=CollectorRegistry(), triton_names=False)  # Triton's names: its own lints
    metrics.model("m", "1").request_done("success", 0.001)
    metrics.add_processes(lambda: [("engine", os.getpid()), ("worker", os.getppid())])
    text = metrics.render()
    assert MEMORY.encode() in text
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, b"")
