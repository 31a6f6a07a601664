"""lab/server_overhead.py's account of where a concurrency-N shortfall goes (the CPU the server got against
what the model used in-process, times the CPU per image), the in-process CPU reading it rests on, and one
tiny run of the script. No timing assertions: the figures are the benchmark's to print."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import docs_commands

from lab import server_overhead
from lab.serving_floor import write_models
from resnet_serve.bench import baseline
from resnet_serve.bench.stats import LatencySummary


def _inprocess(batch: int, runs: int, seconds: float, cpu_s: float) -> baseline.BaselineResult:
    times = [seconds / runs] * runs
    return baseline.BaselineResult(batch, runs, LatencySummary.of(times), batch * runs / seconds, cpu_s)


def test_a_baseline_result_says_how_many_cores_its_model_kept_busy() -> None:
    result = _inprocess(batch=4, runs=25, seconds=1.0, cpu_s=1.8)  # 100 images/s on 1.8 cores
    assert result.throughput == pytest.approx(100.0)
    assert result.cores == pytest.approx(1.8)
    assert result.as_dict()["cores"] == pytest.approx(1.8)


def test_the_shortfall_splits_into_the_cpu_the_server_got_and_the_cpu_per_image() -> None:
    model = _inprocess(batch=8, runs=25, seconds=1.0, cpu_s=2.0)  # 200 img/s, 10 ms of CPU per image
    # 170 images in 1 s with 1.87 cores: 11 ms each, 1 ms of it serving; the client took 0.05 cores
    split = server_overhead.cpu_split(170, 1.0, 1.87, 0.05, model)
    assert split["step_ratio"] == pytest.approx(0.85)
    assert split["cpu_share"] == pytest.approx(0.935)  # 1.87 of the model's 2 cores
    assert split["cpu_efficiency"] == pytest.approx(10 / 11)
    assert split["cpu_share"] * split["cpu_efficiency"] == pytest.approx(split["step_ratio"])
    assert split["client_cores"] == pytest.approx(0.05)
    assert split["inprocess_cpu_ms_per_image"] == pytest.approx(10.0)
    assert split["server_cpu_ms_per_image"] == pytest.approx(11.0)
    assert split["inprocess_batch"] == 8


def test_a_step_that_served_nothing_is_told_without_dividing_by_zero() -> None:
    split = server_overhead.cpu_split(0, 2.0, 0.0, 0.1, _inprocess(1, 10, 1.0, 1.0))
    assert split["step_ratio"] == 0.0 and split["cpu_efficiency"] == 0.0
    assert split["server_cpu_ms_per_image"] == float("inf")


def test_the_in_process_baseline_reads_the_cpu_of_its_timed_runs(tmp_path: Path) -> None:
    model = write_models(tmp_path)["large"]  # a mean over 150,528 floats: some work per run
    (result,) = baseline.measure(model, [2], seconds=0.3, threads=1)
    assert result.runs >= 5 and result.cpu_s > 0
    # one intra-op thread and this process's idle others: at most about one core, never more than it has
    assert 0 < result.cores <= len(os.sched_getaffinity(0)) + 0.25


@pytest.mark.slow
def test_the_documented_split_command_with_a_tiny_model_accounts_for_the_step_by_the_servers_count(
    tmp_path: Path,
) -> None:
    documented = docs_commands.documented_arguments(
        "benchmarking.md", "### Where the ResNet-50 shortfall goes", "lab.server_overhead"
    )
    model = write_models(tmp_path)["small"]
    out = tmp_path / "overhead.json"
    bounds = ["--model", str(model), "--rounds", "1", "--window", "0.5", "--warmup", "0.3", "--max-step-time",
              "2", "--batch-sizes", "1,2", "--concurrency", "4", "--out", str(out)]  # fmt: skip
    argv = [*documented, *bounds]
    assert "--serve-arg=--workers" in documented  # the default workers, as the docs measured them
    assert server_overhead.main(argv) == 0
    result = json.loads(out.read_text())
    (row,) = result["rounds"]
    split = row["cpu_split"]
    assert row["server_c4_errors"] == {} and row["server_c4_throughput"] > 0
    # the server counted at least the answers of the kept windows, which are part of the step
    assert split["step_served"] >= row["server_c4_requests"] > 0
    assert split["server_cores"] > 0 and split["client_cores"] > 0 and split["inprocess_cores"] > 0
    assert split["cpu_share"] * split["cpu_efficiency"] == pytest.approx(split["step_ratio"])
    assert set(result["median_cpu_split"]) >= {"cpu_share", "cpu_efficiency", "step_ratio"}
