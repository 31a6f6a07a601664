"""lab/serving_floor.py (issue #22's instrument): the request it sends, how it reads h2load, and one tiny run
against both real servers whose every answer must be counted a success by the server itself. No timing
assertions: the figures are the benchmark's to print, not the tests' to judge."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import docs_commands

from lab import serving_floor
from resnet_serve.protos import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## The serving floor (issue #22's instrument)"

# h2load 1.52's summary of a run whose connections were refused (the shape every run's summary has)
REFUSED = """starting benchmark...
spawning thread #0: 2 total client(s). 100 total requests

finished in 652us, 0.00 req/s, 0B/s
requests: 100 total, 0 started, 0 done, 0 succeeded, 100 failed, 100 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
"""


def test_the_request_is_a_grpc_framed_model_infer_of_the_tensor() -> None:
    array = np.arange(16, dtype=np.float32).reshape(1, 16)
    framed = serving_floor.grpc_frame(serving_floor.request_message("small", array))
    flag, length = struct.unpack(">BI", framed[:5])
    assert (flag, length) == (0, len(framed) - 5)
    request = pb.ModelInferRequest.FromString(framed[5:])
    assert request.model_name == "small"
    assert (request.inputs[0].name, request.inputs[0].datatype, list(request.inputs[0].shape)) == (
        "input",
        "FP32",
        [1, 16],
    )
    assert np.array_equal(np.frombuffer(request.raw_input_contents[0], np.float32), array.ravel())


def test_h2load_summary_is_read_with_its_units_and_failures() -> None:
    parsed = serving_floor.parse_h2load(REFUSED)
    assert parsed["seconds"] == pytest.approx(652e-6)
    assert (parsed["total"], parsed["succeeded"], parsed["failed"], parsed["errored"]) == (100, 0, 100, 100)
    assert parsed["status_2xx"] == 0
    with pytest.raises(ValueError, match="unexpected h2load output"):
        serving_floor.parse_h2load("h2load: something else entirely")


def test_capacity_is_the_workers_limit_or_the_engines() -> None:
    alone = serving_floor.capacity(500.0, None)  # one process: N cores × 2,000/s
    assert alone["1"] == pytest.approx(2000) and alone["16"] == pytest.approx(32000)
    split = serving_floor.capacity(500.0, 100.0)  # the engine caps it at 10,000/s
    assert split["2"] == pytest.approx(4000) and split["8"] == pytest.approx(10000)


# a child that spends 0.3 s of its own CPU time, says so, and waits to be killed
BURNER = "import time\nwhile time.process_time() < 0.3: pass\nprint('burnt', flush=True)\ntime.sleep(60)\n"


def test_cpu_is_counted_for_the_server_and_every_process_under_it() -> None:
    spawner = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {BURNER!r}]); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", spawner], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "burnt"
        tree = serving_floor.process_tree_cpu(parent.pid)
        assert parent.pid in tree and len(tree) == 2  # the parent and its (grand)child
        (child,) = set(tree) - {parent.pid}
        assert tree[child][0] >= 0.25 and "process_time" in tree[child][1]
    finally:
        for pid in serving_floor.process_tree_cpu(parent.pid):
            if pid != parent.pid:
                os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_cpu_lists_are_read_as_taskset_reads_them_and_unusable_cpus_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert serving_floor.cpu_list("0") == {0}
    assert serving_floor.cpu_list("0-2,5") == {0, 1, 2, 5}
    beyond = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(SystemExit) as exit_info:
        serving_floor.main(["--server-cpus", str(beyond), "--out", "/nonexistent/out"])
    assert exit_info.value.code == 2
    assert f"CPU {beyond} is not one this process may use" in capsys.readouterr().err


def test_without_h2load_it_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert serving_floor.main(["--out", "/nonexistent/out"]) == 2
    assert "apt-get install -y nghttp2-client" in capsys.readouterr().err


def documented_arguments() -> list[str]:
    """The arguments of the `python -m lab.serving_floor` command docs/benchmarking.md's section shows."""
    return docs_commands.documented_arguments("benchmarking.md", SECTION, "lab.serving_floor")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("h2load") is None, reason=serving_floor.INSTALL_H2LOAD)
def test_the_documented_command_with_tiny_bounds_counts_every_answer_on_both_servers(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    bounds = ["--rounds", "1", "--duration", "0.3", "--warmup-requests", "40", "--min-requests", "40",
              "--max-requests", "400", "--connections", "2", "--streams", "2"]  # fmt: skip
    pinning = ["--server-cpus", str(cpus[0]), "--client-cpus", str(cpus[-1])]
    # the docs' command as written, then tiny bounds, this machine's CPUs and a temporary folder (last wins)
    assert serving_floor.main([*documented_arguments(), *bounds, *pinning, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "serving_floor.json").read_text())
    assert (tmp_path / "serving_floor.png").stat().st_size > 0
    assert result["cpu"]["model_name"] and isinstance(result["cpu"]["flags"], list)
    assert result["consistent"] is True
    servers = {entry["server"] for entry in result["results"]}
    ours = (
        {"resnet-serve --workers 1", "resnet-serve --workers 2"}
        if result["serve_has_workers"]
        else {"resnet-serve"}
    )
    floors = {"bare grpc.aio", "bare grpc.aio x2"} if result["serve_has_workers"] else {"bare grpc.aio"}
    if "--hop-floor" in documented_arguments():
        floors.add("bare grpc.aio + hop")
    assert servers == floors | ours
    assert {entry["size"] for entry in result["results"]} == {"small", "large"}
    for entry in result["results"]:
        # every request h2load sent came back 2xx and the server counted it a success, none a failure
        assert entry["h2load_succeeded"] == entry["h2load_2xx"] == entry["server_success"] > 0
        assert entry["h2load_failed"] == entry["server_fail"] == 0
        assert (
            entry["requests_per_s"] > 0 and entry["cpu_us_per_request"] > 0 and entry["server_cores_used"] > 0
        )
        assert set(entry["capacity"]) == {"1", "2", "4", "8", "16"}
        if entry["server"] != "bare grpc.aio":
            assert entry["requests_per_s_over_bare"] > 0
        if entry["server"] in ("resnet-serve --workers 2", "bare grpc.aio + hop"):  # the engine's CPU apart
            assert entry["engine_cpu_us_per_request"] > 0 and entry["worker_cpu_us_per_request"] > 0
    for row in result["rounds"] + result["warmup"]:
        assert row["server_success"] == row["h2load"]["status_2xx"] == row["requests"]
