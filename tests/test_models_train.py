"""``resnet-serve train``: the loss falls, an interrupted run resumes exactly, torchrun trains data-parallel,
and bad input is a one-line error with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_models_data import write_digit_folder

from resnet_serve.cli.main import main
from resnet_serve.models.checkpoint import load_model, read_checkpoint
from resnet_serve.training.log import log_paths, read_log

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str | Path) -> int:
    return main(["train", *map(str, argv)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 training / 40 held-out real digits as 16x16 PNG files, 10 class folders."""
    return write_digit_folder(tmp_path_factory.mktemp("data") / "digits", classes=10, per_class=20, size=16)


def _tiny_args(data: Path, out: Path, epochs: int = 2) -> list[str | Path]:
    return ["--dataset", "folder", "--data", data, "--color", "L", "--image-size", "16",
            "--epochs", str(epochs), "--batch-size", "32", "--out", out]  # fmt: skip


@pytest.mark.slow
def test_short_digits_run_lowers_the_loss_and_writes_checkpoint_log_and_curves(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    assert _run("--epochs", "2", "--batch-size", "64", "--warmup-epochs", "0.5", "--out", out) == 0
    log_path, png_path = log_paths(out)
    history = read_log(log_path)
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[1]["test_acc"] > 0.3  # well above the 10 % of guessing
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, meta = load_model(out, arch="resnet20")
    assert meta["epoch"] == 2 and meta["labels"] == [str(d) for d in range(10)]
    assert meta["preprocess"]["color"] == "L" and meta["model_config"] == {"num_classes": 10, "in_chans": 1}


def test_resume_after_a_crash_mid_epoch_loses_no_epoch_and_ends_like_an_uninterrupted_run(
    tiny: Path, tmp_path: Path
) -> None:
    straight, crashed = tmp_path / "straight.pt", tmp_path / "crashed.pt"
    assert _run(*_tiny_args(tiny, straight, epochs=3)) == 0
    steps_per_epoch = 5  # 160 images / batch 32
    # Crash two steps into epoch 3: nothing of that epoch is written, epochs 1-2 are safe on disk.
    assert _run(*_tiny_args(tiny, crashed, epochs=3), "--stop-after-steps", str(2 * steps_per_epoch + 2)) == 3
    assert read_checkpoint(crashed)["epoch"] == 2
    assert _run("--resume", "--out", crashed) == 0
    a, b = read_checkpoint(straight), read_checkpoint(crashed)
    assert b["epoch"] == 3 and [r["epoch"] for r in read_log(log_paths(crashed)[0])] == [1, 2, 3]
    assert abs(a["metrics"]["test_acc"] - b["metrics"]["test_acc"]) <= 0.003
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6)


def test_resume_refuses_settings_that_contradict_the_checkpoint(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    assert _run(*_tiny_args(tiny, out, epochs=1), "--image-size", "8") == 0
    capsys.readouterr()
    assert _run("--resume", "--out", out, "--arch", "resnet56") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "resnet20" in err and "resnet56" in err
    assert _run("--resume", "--out", out, "--lr", "0.5") == 2
    assert "--lr" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--arch", "resnet21"], "known: resnet20"),
        (["--dataset", "folder"], "needs --data"),
        (["--data", "/some/photos"], "digits is built in"),
        (["--dataset", "folder", "--data", "/nonexistent/dir"], "does not exist"),
        (["--dataset", "cifar10", "--data", "/nonexistent/dir"], "no CIFAR-10 batches"),
        (["--resume", "/nonexistent/model.pt"], "not found"),
    ],
)
def test_bad_input_is_a_one_line_error_and_exit_2(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(*argv, "--out", tmp_path / "m.pt") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnet-serve train: error: ") and expected in err and "\n" not in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lr", "-1"),
        ("--epochs", "0"),
        ("--batch-size", "0"),
        ("--momentum", "-0.5"),
        ("--label-smoothing", "2"),
    ],
)
def test_out_of_range_settings_are_a_one_line_error_and_write_nothing(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(flag, value, "--out", tmp_path / "m.pt") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnet-serve train: error: ") and flag in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes_trains_and_rank_0_writes_once(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp" / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "resnet_serve", "train", *map(str, _tiny_args(tiny, out, epochs=2))]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    payload = read_checkpoint(out)
    assert payload["epoch"] == 2 and payload["train_config"]["batch_size"] == 32
    assert [r["epoch"] for r in read_log(log_paths(out)[0])] == [1, 2]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.curves.png", "model.log.jsonl", "model.pt"]
