"""`resnet-serve bench` for a few seconds per mode against a real `resnet-serve serve` process."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pytest
from kserve_fixtures import KServeServer, kserve_server

from resnet_serve.cli.main import main

pytestmark = pytest.mark.slow
__all__ = ["kserve_server"]  # the fixture, imported so pytest finds it

# Each step: 0.2 s warm-up, then 0.4 s windows for at most 1.2 s.
QUICK = ["--warmup", "0.2", "--window", "0.4", "--max-step-time", "1.2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server(kserve_server: KServeServer) -> KServeServer:
    """A real server (one per module) with the tiny classifier as `tiny` (versions 1 and 2)."""
    return kserve_server


def bench(server: KServeServer, out: Path, *args: str) -> dict[str, Any]:
    assert main(["bench", "--server", server.url, "--out", str(out), *QUICK, *args]) == 0
    for png in ("latency_throughput.png", "latency_cdf.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    doc: dict[str, Any] = json.loads((out / "bench.json").read_text())
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert len(rows) == len(doc["steps"])
    return doc


def test_closed_loop_sweep_on_the_image_api_with_the_baseline(
    server: KServeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = server.model_file("tiny", "2")
    doc = bench(server, tmp_path, "--model", "tiny", "--concurrency", "1,2", "--baseline", str(model),
                "--baseline-time", "0.3")  # fmt: skip
    assert doc["format"] == "resnet-serve-bench/1"
    assert doc["config"]["protocol"] == "image" and doc["config"]["mode"] == "closed"
    assert [s["concurrency"] for s in doc["steps"]] == [1, 2]
    for step in doc["steps"]:
        assert step["throughput"] > 0 and step["requests"] > 0 and step["error_count"] == 0
        latency = step["latency_ms"]
        assert latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["p99.9"]
        assert set(step["server_ms"]) == {"queue_ms", "preprocess_ms", "compute_ms", "batch_size"}
        # gRPC, decoding and queueing can only add to the bare model's time.
        assert step["overhead_p50"] > 1.0
    assert doc["baseline"][0]["batch_size"] == 1 and doc["baseline"][0]["throughput"] > 0
    assert doc["overhead"]["latency_ratio_p50_at_lightest_load"] > 1.0
    assert "c=1" in capsys.readouterr().out


def test_open_loop_with_slo_search_on_the_image_api(server: KServeServer, tmp_path: Path) -> None:
    doc = bench(server, tmp_path, "--model", "tiny", "--rate", "40", "--slo-p99-ms", "2000")
    step = doc["steps"][0]
    assert step["mode"] == "open" and step["target_rate"] == 40 and step["phase"] == "sweep"
    # The schedule is exact per window; whether a busy test machine kept up is not asserted here
    # (tests/test_bench_loadgen.py pins that down against fakes with known speed).
    assert step["offered_rate"] == pytest.approx(40, rel=0.01)
    assert step["requests"] > 0 and step["error_count"] == 0
    for key in ("sent_rate", "backlog", "backlog_growth_per_s", "max_send_lag_ms", "kept_up"):
        assert step[key] is not None
    assert doc["slo"]["method"] == "bisection" and doc["slo"]["p99_ms"] == 2000
    assert doc["slo"]["candidates"] == len(doc["steps"])
    assert doc["slo"]["best"] in {f"rate {s['target_rate']:g}/s" for s in doc["steps"]}


def test_closed_loop_on_the_kserve_api_through_tritonclient(server: KServeServer, tmp_path: Path) -> None:
    doc = bench(server, tmp_path, "--protocol", "kserve", "--model", "tiny", "--batch-size", "2",
                "--concurrency", "2")  # fmt: skip
    (step,) = doc["steps"]
    assert doc["config"]["protocol"] == "kserve" and doc["config"]["batch_size"] == 2
    assert "FP32" in doc["config"]["workload"] and "[2, 1, 8, 8]" in doc["config"]["workload"]
    assert step["requests"] > 0 and step["error_count"] == 0
    assert step["throughput"] == pytest.approx(2 * step["requests"] / step["duration_s"])
    # KServe replies carry no timing: the split comes from ModelStatistics before and after the windows.
    split = step["server_ms"]
    assert split is not None and split["batch_size"] >= 2 and split["compute_ms"] > 0


def test_kserve_over_http_as_perf_analyzers_dash_i_http(server: KServeServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "-i", "http", "--server", server.http_url, "-m", "tiny", "--concurrency-range", "1:2",
            "--out", str(out), *QUICK]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((out / "bench.json").read_text())
    assert doc["config"]["protocol"] == "kserve" and doc["config"]["transport"] == "http"
    assert "via tritonclient (http)" in doc["config"]["workload"]
    assert [s["concurrency"] for s in doc["steps"]] == [1, 2]
    for step in doc["steps"]:
        assert step["requests"] > 0 and step["error_count"] == 0
        assert step["server_ms"] is not None and step["server_ms"]["compute_ms"] > 0  # HTTP statistics


def test_an_unreachable_server_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    code = main(["bench", "--server", "127.0.0.1:1", "--out", str(tmp_path), *QUICK])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == 1 and elapsed < 3.0, (elapsed, err)  # it waited 10 s, then said "no server answered"
    assert err.startswith("resnet-serve bench: error: cannot connect to 127.0.0.1:1: connection refused"), err
