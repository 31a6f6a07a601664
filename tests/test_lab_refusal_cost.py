"""lab/refusal_cost.py: how it attributes a server's CPU to the threads and processes that answer requests,
and one tiny run of the command docs/benchmarking.md shows, whose every request must be counted by the
server itself. No timing assertions: the figures are the benchmark's to print."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import docs_commands

from lab import refusal_cost
from lab.serving_floor import INSTALL_H2LOAD

SECTION = "### What a refusal costs"


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_one_process_serving_cpu_is_its_main_thread_and_not_its_other_threads() -> None:
    before = refusal_cost.serving_threads_cpu(os.getpid())
    worker = threading.Thread(target=_burn, args=(0.6,))  # a compute thread: not serving
    worker.start()
    worker.join()
    after_worker = refusal_cost.serving_threads_cpu(os.getpid())
    _burn(0.3)  # the main thread: serving
    after_main = refusal_cost.serving_threads_cpu(os.getpid())
    assert after_worker - before < 0.2
    assert after_main - after_worker >= 0.2


def test_a_worker_process_counts_as_serving_and_the_root_as_the_engine() -> None:
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
    burn += "time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn, refusal_cost.WORKER_MODULE])
    try:
        deadline = time.monotonic() + 20
        while refusal_cost.cpu_by_role(os.getpid(), one_process=False)["worker"] < 0.4:
            assert time.monotonic() < deadline, "the child's CPU never showed as a worker's"
            time.sleep(0.1)
        roles = refusal_cost.cpu_by_role(os.getpid(), one_process=False)
        assert roles["serving"] == roles["worker"] >= 0.4
        assert roles["engine"] > 0
    finally:
        child.kill()
        child.wait()


def documented_arguments() -> list[str]:
    """The arguments of the `python -m lab.refusal_cost` command in docs/benchmarking.md's section."""
    return docs_commands.documented_arguments("benchmarking.md", SECTION, "lab.refusal_cost")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("h2load") is None, reason=INSTALL_H2LOAD)
def test_the_documented_command_with_tiny_bounds_counts_every_request_as_served_or_refused(
    tmp_path: Path,
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    bounds = ["--rounds", "1", "--requests", "300", "--warmup-requests", "30", "--connections", "2",
              "--streams", "4", "--slow-layers", "20", "--server-cpus", str(cpus[0]),
              "--client-cpus", str(cpus[-1]), "--out", str(tmp_path / "refusals.json")]  # fmt: skip
    assert refusal_cost.main([*documented_arguments(), *bounds]) == 0
    result = json.loads((tmp_path / "refusals.json").read_text())
    assert result["consistent"] is True and result["cpu"]["model_name"]
    assert [r["server"] for r in result["rounds"]] == [
        "bare",
        "resnet-serve --workers 1",
        "resnet-serve --workers 2",
    ]
    for row in result["rounds"]:
        assert row["requests"] == 300 and row["serving_cpu_us_per_request"] > 0
        if row["server"] != "bare":
            # the server's own statistics: every request answered, most of them refused (a queue of one)
            assert row["served"] + row["refused"] == 300 and row["refused"] > row["served"] > 0
    workers2 = result["rounds"][2]
    assert workers2["serving_cpu_us_per_request"] == workers2["worker_cpu_us_per_request"] > 0
    assert {e["server"] for e in result["summary"]} == {r["server"] for r in result["rounds"]}
