"""The training record next to a checkpoint: ``<out>.log.jsonl`` (one JSON object per epoch) and
``<out>.curves.png`` (loss and accuracy per epoch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnet_serve.formats.files import write_bytes_atomic


def log_paths(checkpoint: Path) -> tuple[Path, Path]:
    """(JSON-lines log, curves PNG) beside a checkpoint: ``m.pt`` → ``m.log.jsonl``, ``m.curves.png``."""
    stem = checkpoint.with_suffix("")
    return stem.with_name(stem.name + ".log.jsonl"), stem.with_name(stem.name + ".curves.png")


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole log (it is short), so a resumed run's log holds each epoch exactly once."""
    write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in history).encode())


def read_log(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a log written by :func:`write_log`."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(path: Path, history: list[dict[str, Any]], title: str) -> None:
    """Loss (train/held-out) and accuracy per epoch, as a PNG (matplotlib's Agg backend: no display)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="held-out")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in history], label="held-out")
    ax_acc.set(xlabel="epoch", ylabel="top-1 %", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
