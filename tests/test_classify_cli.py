"""`resnet-serve classify` against an in-process fake server: formats, folders, globs and failures."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_server import FakeServer
from PIL import Image

from resnet_serve.cli.main import main


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """dark.png (class 0), sub/bright.png (class 9), corrupt.png, and notes.txt (not an image)."""
    (tmp_path / "sub").mkdir()
    Image.new("L", (8, 8), 0).save(tmp_path / "dark.png")
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "sub" / "bright.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG but not really")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def classify(server: FakeServer, *args: str) -> list[str]:
    return ["classify", "--server", server.target, *args]


def test_good_images_print_their_labels_and_exit_zero(
    server: FakeServer, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        classify(server, "--top-k", "2", str(images / "dark.png"), str(images / "sub" / "bright.png"))
    )
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{images / 'dark.png'}: 0 (91.0%)  ")
    assert lines[1].startswith(f"{images / 'sub' / 'bright.png'}: 9 (91.0%)  ")
    assert "2 images" in err and "2 ok, 0 failed" in err and "p99" in err


def test_a_folder_is_walked_and_failures_are_reported_after_finishing_the_rest(
    server: FakeServer, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(images / "missing.png")
    code = main(classify(server, "--format", "json", str(images), missing))
    out, err = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}
    # Sorted walk of the folder (notes.txt skipped), then the missing file, in argument order.
    assert [Path(r["path"]).name for r in records] == ["corrupt.png", "dark.png", "bright.png", "missing.png"]
    assert by_name["corrupt.png"]["error"]["code"] == "INVALID_ARGUMENT"
    assert by_name["missing.png"]["error"] == {"code": "NOT_FOUND", "message": "no such file"}
    assert by_name["bright.png"]["predictions"][0]["label"] == "9"
    assert (
        by_name["dark.png"]["model"] == "fake" and by_name["dark.png"]["server_timing_us"]["batch_size"] == 1
    )
    assert "2 ok, 2 failed" in err and "INVALID_ARGUMENT 1" in err and "NOT_FOUND 1" in err


def test_globs_and_csv_give_one_row_per_prediction(
    server: FakeServer, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(classify(server, "--format", "csv", "--top-k", "3", str(images / "**" / "*ight.png")))
    out, _ = capsys.readouterr()
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["rank"], r["label"]) for r in rows][:1] == [("1", "9")]
    assert len(rows) == 3 and all(Path(r["path"]).name == "bright.png" and not r["error"] for r in rows)


def test_a_glob_that_matches_nothing_is_a_failure(
    server: FakeServer, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(classify(server, str(images / "*.jpeg"))) == 1
    assert "the pattern matches no files" in capsys.readouterr().err


def test_skipped_files_and_unreadable_folders_are_summed_up_in_one_stderr_line(
    server: FakeServer, images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder walk skipped files without an image extension and folders it could not read, silently."""
    (images / "locked").mkdir()
    (images / "locked" / "hidden.png").write_bytes(b"")
    for name in ("a.json", "b.md", "c.csv"):
        (images / "sub" / name).write_text("{}")
    scandir = os.scandir

    def refuse_locked(path: str = ".") -> object:  # chmod 000 stops no one when the tests run as root
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    code = main(classify(server, "--format", "json", str(images / "sub"), str(images)))
    out, err = capsys.readouterr()
    assert code == 1  # corrupt.png
    assert [Path(json.loads(line)["path"]).name for line in out.splitlines()] == [
        "bright.png",
        "corrupt.png",
        "dark.png",
    ]
    sub = images / "sub"
    assert err.splitlines()[0] == (
        f"skipped 4 files without an image extension: {sub / 'a.json'}, {sub / 'b.md'}, {sub / 'c.csv'}, "
        "...; "
        f"1 folder that cannot be read: {images / 'locked'} (Permission denied); "
        f"1 path given more than once (classified once): {sub / 'bright.png'}"
    )


def test_a_folder_named_that_cannot_be_read_is_a_failure_saying_so(
    server: FakeServer, images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "the folder holds no image files"."""
    scandir = os.scandir

    def refuse(path: str = ".") -> object:
        if Path(path) == images / "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    assert main(classify(server, "--format", "json", str(images / "sub"))) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["error"]["message"] == "the folder cannot be read (Permission denied)", record


def test_a_file_named_twice_or_by_overlapping_globs_and_folders_is_classified_once_in_first_order(
    server: FakeServer, images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(images)
    args = ["sub/bright.png", "dark.png", "./dark.png", "*.png", "sub/", "sub/../sub/bright.png"]
    assert main(classify(server, "--format", "json", *args)) == 1  # corrupt.png
    out, err = capsys.readouterr()
    assert [json.loads(line)["path"] for line in out.splitlines()] == [
        "sub/bright.png",
        "dark.png",
        "corrupt.png",
    ]
    assert err.splitlines()[0] == (
        "skipped 2 paths given more than once (classified once): dark.png, sub/bright.png"
    )


def test_many_images_with_concurrency_keep_input_order(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(30):
        Image.new("L", (4, 4), i * 8).save(tmp_path / f"{i:02d}.png")
    assert (
        main(classify(server, "--concurrency", "7", "--format", "json", "--top-k", "1", str(tmp_path))) == 0
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in records] == [f"{i:02d}.png" for i in range(30)]
    assert [r["predictions"][0]["label"] for r in records] == [
        str(min(int(i * 8 / 25.6), 9)) for i in range(30)
    ]


def test_a_closed_port_fails_within_3s_with_one_line_naming_the_reason(
    images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It waited 10 s, then said "no server answered", whatever the reason (issue #24)."""
    start = time.monotonic()
    code = main(["classify", "--server", "127.0.0.1:1", str(images / "dark.png")])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == 1 and elapsed < 3.0, (elapsed, err)
    assert len(err.splitlines()) == 1
    refused = "cannot connect to 127.0.0.1:1: connection refused: nothing listens there"
    assert err.startswith(f"resnet-serve classify: error: {refused}"), err


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001", "grpcs://localhost:8001"])
def test_a_url_for_the_server_is_refused_at_once_naming_the_form_wanted(
    url: str, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["classify", "--server", url, str(images / "dark.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"resnet-serve classify: error: {url}: give the gRPC port as HOST:PORT, not a URL"
    ), err


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["classify", "--top-k", "0", "x.png"])
    assert info.value.code == 2
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--concurrency", "--epochs"])
def test_demo_refuses_a_count_below_one_before_doing_any_work(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found late, --concurrency 0 was a ThreadPoolExecutor traceback after a minute of training.
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--workdir", str(tmp_path / "digits"), flag, "0"])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected a number of at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "digits").exists()


@pytest.mark.parametrize("command", ["classify", "health"])
def test_a_reader_that_closes_stdout_ends_the_command_quietly_with_status_141(
    command: str, server: FakeServer, tmp_path: Path
) -> None:
    """`resnet-serve classify ... | head -1` said "error: [Errno 32] Broken pipe" and exited 1."""
    for i in range(40):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i:02d}.png")
    args = [command, "--server", server.target] + (
        ["--no-progress", str(tmp_path)] if command == "classify" else []
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as `head -1` is after its line
    with os.fdopen(write_end, "wb") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "resnet_serve.cli.main", *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 141, done.stderr
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr and "error" not in done.stderr


@pytest.mark.parametrize("command", ["classify", "bench", "health"])
@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ("127.0.0.1:99999", "the port 99999 is not in 1-65535"),  # gRPC dialled 99999 % 65536
        ("127.0.0.1:", "no port"),  # gRPC dialled 443
        ("nonsense", "no port (the server's gRPC port is 8001 by default)"),
        ("localhost:80x", "the port '80x' is not a number"),
    ],
)
def test_a_server_address_that_is_not_host_port_is_a_usage_error_before_anything_is_dialled(
    command: str, server: str, problem: str, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = {"classify": [str(images / "dark.png")], "bench": ["--out", str(images / "out")], "health": []}
    assert main([command, "--server", server, *args[command]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"resnet-serve {command}: error: {server}: expected HOST:PORT; {problem}"), err
    assert "\n" not in err
    assert not (images / "out").exists()


def test_json_lines_stay_valid_json_when_a_score_is_not_a_number() -> None:
    """A NaN score was written as a bare NaN, which no strict JSON reader accepts."""
    from resnet_serve.client.output import Outcome, json_line
    from resnet_serve.client.results import Classification, Prediction, Timing

    predictions = (
        Prediction(0, "a", float("nan")),
        Prediction(1, "b", float("inf")),
        Prediction(2, "c", 0.5),
    )
    line = json_line(Outcome("x.png", Classification("m", "1", predictions, Timing(), "id")))

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    record = json.loads(line, parse_constant=refuse)
    assert [p["score"] for p in record["predictions"]] == [None, None, 0.5]
