"""`resnet-serve bench` options and outputs against the in-process fake server (fast; no model)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fake_server import FakeClassifier, FakeServer
from PIL import Image

from resnet_serve.cli.main import main

QUICK = ["--warmup", "0.1", "--window", "0.3", "--max-step-time", "0.9"]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer(service_time_s=0.002) as s:
        yield s


def test_batched_requests_from_a_glob_count_every_image(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    args = ["bench", "--server", server.target, "--images", str(tmp_path / "*.png"), "--batch-size", "4",
            "--concurrency", "2", "--out", str(out), *QUICK]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((out / "bench.json").read_text())
    (step,) = doc["steps"]
    assert doc["config"]["workload"] == str(tmp_path / "*.png") and doc["config"]["batch_size"] == 4
    assert step["throughput"] == pytest.approx(4 * step["requests"] / step["duration_s"])
    assert step["server_ms"]["batch_size"] == 1.0  # the fake computes one image at a time
    assert doc["config"]["command"].startswith("resnet-serve bench")
    assert "c=2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "--rate '0': every rate must be above 0"),
        (["--concurrency", "4:2"], "--concurrency '4:2'"),
        (["--images", "/nonexistent/*.png"], "--images /nonexistent/*.png: no image files found"),
        # before the sweep, not after minutes of load
        (["--baseline", "/nonexistent/m.onnx"], "--baseline /nonexistent/m.onnx: no such model file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["bench", "--server", server.target, "--out", str(tmp_path), *QUICK, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnet-serve bench: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "bench.json").exists()


def test_an_unknown_model_is_named_with_the_ones_served(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--server", server.target, "--model", "nope", "--out", str(tmp_path), *QUICK]) == 1
    assert "the server has no model 'nope' (fake)" in capsys.readouterr().err


def test_perf_analyzer_spellings_sweep_linearly_time_windows_in_ms_and_write_the_csv_asked_for(
    server: FakeServer, tmp_path: Path
) -> None:
    out, table = tmp_path / "out", tmp_path / "results.csv"
    args = ["bench", "--server", server.target, "--concurrency-range", "2:3", "--measurement-interval", "300",
            "-f", str(table), "--out", str(out), "--warmup", "0.1", "--max-step-time", "0.9"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((out / "bench.json").read_text())
    assert [s["concurrency"] for s in doc["steps"]] == [2, 3]
    assert doc["config"]["window_s"] == pytest.approx(0.3)
    assert table.read_text() == (out / "bench.csv").read_text() and table.read_text().count("\n") == 3


def test_http_transport_is_for_the_kserve_protocol(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "-i", "http", "--protocol", "image", "--out", str(tmp_path), *QUICK]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnet-serve bench: error: -i http benchmarks KServe v2 over HTTP")
    assert not list(tmp_path.iterdir())


def test_a_sweep_where_every_request_fails_says_so_in_one_line_and_plots_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeServer(unavailable_first=10**9) as refusing:  # every Classify: UNAVAILABLE
        args = ["bench", "--server", refusing.target, "--concurrency", "2", "--out", str(tmp_path), *QUICK]
        assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("resnet-serve bench: error: no request completed at any load level (")
    assert "UNAVAILABLE" in err[-1]
    assert (tmp_path / "bench.json").is_file()  # the errors, for whoever looks
    assert not list(tmp_path.glob("*.png"))


def test_images_that_do_not_decode_are_refused_before_the_run_naming_them(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with corrupt files mixed in ran, 330 INVALID_ARGUMENT in a step, and exited 0."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (8, 8), 40).save(images / "good.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG but not really")
    (images / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    args = ["bench", "--server", server.target, "--images", str(images), "--out", str(out), *QUICK]
    calls = server.servicer.calls
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"resnet-serve bench: error: --images {images}: 2 of 3 files are not images"), err
    assert f"{images / 'corrupt.png'}: image bytes are not a decodable image" in err
    assert f"{images / 'empty.jpg'}: image is empty" in err and "\n" not in err
    assert server.servicer.calls == calls and not out.exists()  # refused before a request was sent


class _Refusing(FakeClassifier):
    """Refuses every third Classify with RESOURCE_EXHAUSTED, as an overloaded server's admission does."""

    async def Classify(self, request: Any, context: Any) -> Any:
        if self.calls % 3 == 2:
            self.calls += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        return await super().Classify(request, context)


def test_a_sweep_with_failed_requests_writes_everything_then_exits_1_naming_the_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeServer(_Refusing(service_time_s=0.002)) as refusing:
        args = ["bench", "--server", refusing.target, "--concurrency", "1,2", "--out", str(tmp_path), *QUICK]
        assert main(args) == 1
    out, err = capsys.readouterr()
    doc = json.loads((tmp_path / "bench.json").read_text())
    failed = sum(s["error_count"] for s in doc["steps"])
    total = failed + sum(s["requests"] for s in doc["steps"])
    assert failed > 0 and "c=2" in out and len(list(tmp_path.glob("*.png"))) == 2  # the report is whole
    assert err.strip().splitlines()[-1] == (
        f"resnet-serve bench: error: {failed} of {total} requests measured failed (RESOURCE_EXHAUSTED "
        f"{failed}) at concurrency 1, concurrency 2; the latencies and throughput count the successful ones "
        f"only; see {tmp_path / 'bench.json'}"
    )


def test_a_server_that_goes_away_mid_sweep_stops_it_with_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every remaining step ran to --max-step-time against a dead server, and bench exited 0."""
    dying = FakeServer(service_time_s=0.002).start()
    threading.Timer(0.6, dying.stop).start()  # during the first step's windows: connection refused after
    levels = "1,2,4,8,16,32"
    args = ["bench", "--server", dying.target, "--concurrency", levels, "--out", str(tmp_path), *QUICK]
    start = time.monotonic()
    assert main(args) == 1
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    doc = json.loads((tmp_path / "bench.json").read_text())
    measured = len(doc["steps"])
    assert measured < 6 and doc["stopped"] == {"reason": "server gone", "steps": measured, "levels": 6}
    assert set(doc["steps"][-1]["errors"]) == {"UNAVAILABLE"} and doc["steps"][-1]["requests"] == 0
    last, concurrency = err.strip().splitlines()[-1], doc["steps"][-1]["concurrency"]
    assert last.startswith(
        f"resnet-serve bench: error: the server stopped answering at concurrency {concurrency}: every "
        f"request failed UNAVAILABLE for 0.9 s, so the sweep stopped there ({measured} steps measured, 6 "
        "planned); see "
    ), last
    assert f"STOPPED EARLY (server gone): {measured} of 6 load levels measured" in out
    assert elapsed < 5 * 1.2, elapsed  # six steps of ~1.1 s each ran before


def test_ctrl_c_writes_the_steps_already_measured_marked_interrupted_then_exits_130(
    server: FakeServer, tmp_path: Path
) -> None:
    args = ["bench", "--server", server.target, "--concurrency", "1,2,4,8", "--out", str(tmp_path), *QUICK]
    bench = subprocess.Popen(
        [sys.executable, "-m", "resnet_serve.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bench.stderr is not None
    lines = [bench.stderr.readline()]  # the first step's line: concurrency 1 is measured
    assert lines[0].startswith("concurrency 1: "), lines
    bench.send_signal(signal.SIGINT)
    out, err = bench.communicate(timeout=30)
    assert bench.returncode == 130, err
    doc = json.loads((tmp_path / "bench.json").read_text())
    measured = [s["concurrency"] for s in doc["steps"]]
    assert measured[0] == 1 and len(measured) < 4
    assert doc["stopped"] == {"reason": "interrupted", "steps": len(measured), "levels": 4}
    assert "c=1" in out and f"STOPPED EARLY (interrupted): {len(measured)} of 4 load levels measured" in out
    assert err.strip().splitlines()[-1] == "resnet-serve bench: interrupted" and "Traceback" not in err


def _dead_http_sender() -> Any:
    """A KServe sender over tritonclient.http to a port nothing listens on."""
    from resnet_serve.bench.senders import KServeSender, TensorModel, _triton_http_client

    model = TensorModel("m", "INPUT", "FP32", (3,), True, "OUTPUT")
    return KServeSender(_triton_http_client("127.0.0.1:1", None), model, 1, 2.0, "http")


def test_http_requests_to_a_dead_server_count_as_unavailable_not_a_traceback() -> None:
    """tritonclient.http let aiohttp's ClientConnectorError out of KServeSender.send and .counters."""
    pytest.importorskip("tritonclient.http")

    async def ask() -> tuple[Any, Any]:
        sender = _dead_http_sender()
        try:
            return await sender.send(), await sender.counters()
        finally:
            await sender.close()

    reply, counters = asyncio.run(ask())
    assert reply.code == "UNAVAILABLE" and counters is None


def test_an_http_sweep_against_a_dead_server_stops_as_a_grpc_one_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """-i http: every request UNAVAILABLE for the step's windows ends the sweep, exit 1 in one line."""
    pytest.importorskip("tritonclient.http")
    from resnet_serve.bench import main as bench_main

    async def dead(options: Any) -> tuple[Any, str, str]:  # the metadata was read; then the server died
        return _dead_http_sender(), "FP32 tensors", "m"

    monkeypatch.setattr(bench_main, "make_sender", dead)
    args = [
        "bench",
        "-i",
        "http",
        "--server",
        "127.0.0.1:1",
        "--concurrency",
        "1,2,4",
        "--out",
        str(tmp_path),
    ]
    assert main([*args, *QUICK]) == 1
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["stopped"] == {"reason": "server gone", "steps": 1, "levels": 3}
    assert set(doc["steps"][0]["errors"]) == {"UNAVAILABLE"}
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        "resnet-serve bench: error: no request completed at any load level (UNAVAILABLE "
    ), last
    assert (
        "the server stopped answering at concurrency 1: every request failed UNAVAILABLE for 0.9 s, so the "
        "sweep stopped there (1 steps measured, 3 planned)"
    ) in last


def test_http_pointed_at_the_grpc_port_says_so_in_one_line(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """aiohttp's 'Bad status line' (gRPC's HTTP/2 frames) came out as a traceback."""
    pytest.importorskip("tritonclient.http")
    args = ["bench", "-i", "http", "-m", "m", "--server", server.target, "--out", str(tmp_path), *QUICK]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == (
        f"resnet-serve bench: error: KServe metadata from {server.target} over http: that address does not "
        "answer HTTP/1 (a gRPC port?): the HTTP/REST port is 8000 by default (gRPC is 8001, metrics 8002)\n"
    )
