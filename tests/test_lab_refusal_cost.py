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
    end = time.thread_time() + seconds  # this thread's own CPU
    while time.thread_time() < end:
        pass


def test_one_process_serving_cpu_is_every_thread_but_the_busiest_after_the_main_one() -> None:
    before = {100: 1.0, 101: 2.0, 102: 0.5}
    after = {100: 1.4, 101: 5.0, 102: 0.6, 103: 0.2}  # 101 computes; 103 started during the run
    assert refusal_cost.serving_cpu(before, after, pid=100) == pytest.approx(0.4 + 0.1 + 0.2)
    assert refusal_cost.serving_cpu({100: 1.0}, {100: 1.5}, pid=100) == pytest.approx(0.5)  # no other thread


def test_a_thread_that_burns_cpu_shows_in_its_own_entry() -> None:
    burnt, done = threading.Event(), threading.Event()

    def work() -> None:
        _burn(0.4)
        burnt.set()
        done.wait(30)  # alive while it is read

    before = refusal_cost.thread_cpu(os.getpid())
    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert burnt.wait(30)
        after = refusal_cost.thread_cpu(os.getpid())
    finally:
        done.set()
        worker.join()
    assert worker.native_id in after and after[worker.native_id] >= 0.3
    assert after[os.getpid()] - before[os.getpid()] < 0.3  # the main thread only waited


def test_a_worker_process_counts_as_a_worker_and_the_root_as_the_engine() -> None:
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
    burn += "time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn, refusal_cost.WORKER_MODULE])
    try:
        deadline = time.monotonic() + 20
        while refusal_cost.process_cpu(os.getpid())["worker"] < 0.4:
            assert time.monotonic() < deadline, "the child's CPU never showed as a worker's"
            time.sleep(0.1)
        assert refusal_cost.process_cpu(os.getpid())["engine"] > 0
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
    one, workers2 = result["rounds"][1], result["rounds"][2]
    assert 0 < one["serving_cpu_us_per_request"] < one["cpu_us_per_request"]  # the compute thread left out
    assert workers2["serving_cpu_us_per_request"] == workers2["worker_cpu_us_per_request"] > 0
    assert {e["server"] for e in result["summary"]} == {r["server"] for r in result["rounds"]}


def test_bad_arguments_and_a_missing_h2load_are_told_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    beyond = max(os.sched_getaffinity(0)) + 1
    for argv, said in (
        (["--server-cpus", str(beyond)], f"CPU {beyond} is not one this process may use"),
        (["--client-cpus", "one"], "expected a CPU list"),
        (["--rounds", "0"], "each ≥ 1"),
        (["--workers", "2,0"], "each ≥ 1"),
        (["--workers", "two"], "expected numbers separated by commas"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            refusal_cost.main(argv)
        assert exit_info.value.code == 2
        assert said in capsys.readouterr().err
    monkeypatch.setenv("PATH", "/nonexistent")
    assert refusal_cost.main([]) == 2
    assert "apt-get install -y nghttp2-client" in capsys.readouterr().err
