"""The digits model: trained here by `resnet-serve train` when scikit-learn is installed, or taken from a
bundle (`--prepare` writes one on a machine that has it; `--digits` reads it on a node that has not)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from lab.gpu_check.model import Model
from lab.gpu_check.settings import Settings, Skip, log

CHECKPOINT = "digits.pt"
DATA = "digits_data.npz"


def digits_model(cfg: Settings, work: Path, on_gpu: bool) -> Model:
    """The digits checkpoint and held-out data: from a --digits bundle, or trained here when sklearn is."""
    if cfg.digits_bundle is not None:
        ckpt, data = cfg.digits_bundle / CHECKPOINT, cfg.digits_bundle / DATA
        if not ckpt.is_file() or not data.is_file():
            raise Skip(f"digits: {cfg.digits_bundle} lacks {CHECKPOINT} or {DATA} (make it with --prepare)")
        arrays = np.load(data)
        return Model("digits", ckpt, arrays["heldout_x"], arrays["heldout_y"], arrays["calib_x"])
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise Skip(
            "digits: scikit-learn is absent and no --digits bundle was given (make one with --prepare)"
        ) from None
    ckpt = work / CHECKPOINT
    train(ckpt, epochs=2 if cfg.dry_run else 15, device="cuda" if on_gpu else "cpu")
    x, y, calib = arrays_of(ckpt)
    return Model("digits", ckpt, x, y, calib)


def train(ckpt: Path, epochs: int, device: str) -> None:
    """`resnet-serve train` in a child process: the training loop as users run it, and a crash or a hang
    in it (600 s) cannot take the check down."""
    log(f"training the digits model ({epochs} epochs on {device})")
    cmd = [sys.executable, "-m", "resnet_serve", "train", "--out", str(ckpt), "--epochs", str(epochs),
           "--device", device, "--workers", "0"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not ckpt.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Skip(f"digits: training failed ({tail})")


def arrays_of(ckpt: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out images, their labels and 256 calibration images, preprocessed as the checkpoint says."""
    from resnet_serve.export.samples import digits_held_out, digits_training
    from resnet_serve.models.checkpoint import read_checkpoint

    preprocess = read_checkpoint(ckpt)["preprocess"]
    x, y = digits_held_out(preprocess)
    return x, y, digits_training(preprocess, limit=256)


def prepare_bundle(out: Path, epochs: int) -> None:
    """Train the digits model and save its held-out and calibration data, for a node without sklearn."""
    out.mkdir(parents=True, exist_ok=True)
    train(out / CHECKPOINT, epochs, "cpu")
    x, y, calib = arrays_of(out / CHECKPOINT)
    np.savez_compressed(out / DATA, heldout_x=x, heldout_y=y, calib_x=calib)
    log(f"wrote {out}/{CHECKPOINT} and {DATA} ({len(x)} held-out images)")
