"""`resnet-serve bench` options and outputs against the in-process fake server (fast; no model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_server import FakeServer
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
