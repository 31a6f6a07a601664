"""Checkpoints: atomic writes, a round trip that rebuilds the model, and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from resnet_serve.models import checkpoint, registry
from resnet_serve.models.checkpoint import load_model, save_checkpoint
from resnet_serve.models.errors import CheckpointError


def _payload(arch: str = "resnet20") -> dict[str, Any]:
    torch.manual_seed(0)
    model = registry.build(arch, num_classes=3, in_chans=1)
    return {"format": checkpoint.FORMAT, "arch": arch, "model_config": {"num_classes": 3, "in_chans": 1},
            "state_dict": model.state_dict(), "labels": ["a", "b", "c"], "epoch": 1,
            "metrics": {"test_acc": 0.5},
            "preprocess": {"color": "L", "resize": 32, "crop": 32, "interpolation": "bilinear", "mean": [0.5],
                           "std": [0.25]},
            "optimizer": {"state": {}}}  # fmt: skip


def test_round_trip_rebuilds_the_same_model_in_eval_mode(tmp_path: Path) -> None:
    payload = _payload()
    save_checkpoint(tmp_path / "m.pt", payload)
    model, meta = load_model(tmp_path / "m.pt", arch="resnet20")
    assert not model.training
    reference = registry.build("resnet20", num_classes=3, in_chans=1)
    reference.load_state_dict(payload["state_dict"])
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), reference.eval()(x))
    assert meta["labels"] == ["a", "b", "c"] and meta["preprocess"]["mean"] == [0.5]
    assert "state_dict" not in meta and "optimizer" not in meta


def test_save_is_atomic_and_leaves_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, _payload())
    before = path.read_bytes()

    def broken_save(obj: object, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _payload())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_checkpoint_of_another_architecture_is_a_one_line_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.pt", _payload("resnet20"))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "m.pt", arch="resnet56")
    message = str(err.value)
    assert "\n" not in message and "resnet20" in message and "resnet56" in message and "--arch" in message


@pytest.mark.parametrize("content", [None, b"garbage", "plain-state-dict"])
def test_missing_corrupt_or_foreign_files_are_one_line_errors(tmp_path: Path, content: object) -> None:
    path = tmp_path / "m.pt"
    if content == "plain-state-dict":
        torch.save(registry.build("resnet20").state_dict(), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_weights_that_do_not_fit_the_architecture_are_a_one_line_error(tmp_path: Path) -> None:
    payload = _payload()
    payload["model_config"] = {"num_classes": 5, "in_chans": 1}
    save_checkpoint(tmp_path / "m.pt", payload)
    with pytest.raises(CheckpointError, match="does not fit resnet20") as err:
        load_model(tmp_path / "m.pt")
    assert "\n" not in str(err.value)
