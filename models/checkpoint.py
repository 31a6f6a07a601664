"""Checkpoint files (format ``resnet-serve/1``, see docs/architecture.md): atomic save, checked load.

A checkpoint is a ``torch.save``'d dict; :func:`load_model` rebuilds the model from ``arch`` and
``model_config`` through :mod:`models.registry`. Everything in it loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_serve.formats.files import atomic_path
from resnet_serve.models import registry
from resnet_serve.models.errors import CheckpointError, ModelsError

FORMAT = "resnet-serve/1"
#: Keys only training needs; :func:`load_model` leaves them out of ``meta``.
TRAINING_STATE = ("state_dict", "optimizer", "scheduler", "scaler", "rng")


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`formats.files.atomic_path`), fsync'd before renaming.

    A reader (or a run killed mid-write) sees either the old file or the new one, never half of one.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict; :class:`CheckpointError` if it is missing or not a resnet-serve checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found: train one with `resnet-serve train --out {path}`"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} ({reason[:200]}): is it a resnet-serve "
            "checkpoint written by `resnet-serve train`?"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a {FORMAT} checkpoint (format: {found!r}): write one with `resnet-serve train`"
        )
    return payload


def check_arch(payload: dict[str, Any], arch: str | None, path: str | os.PathLike[str]) -> None:
    """Raise a one-line :class:`CheckpointError` if ``payload`` holds another architecture than ``arch``."""
    if arch is not None and payload["arch"] != arch:
        raise CheckpointError(
            f"checkpoint {path} holds a {payload['arch']} model, not {arch}: "
            f"use --arch {payload['arch']} or a checkpoint trained as {arch}"
        )


def model_from(payload: dict[str, Any], path: str | os.PathLike[str] = "<checkpoint>") -> nn.Module:
    """Rebuild the model of a checkpoint dict and load its weights (strict), in eval mode on the CPU."""
    try:
        model = registry.build(payload["arch"], **payload.get("model_config", {}))
        model.load_state_dict(payload["state_dict"], strict=True)
    except ModelsError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} does not fit {payload['arch']} ({first}): was it written by another version?"
        ) from None
    return model.eval()


def load_model(path: str | os.PathLike[str], arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint for inference: ``(model in eval mode on the CPU, meta)``.

    ``meta`` is the checkpoint dict without weights and training state: ``format``, ``arch``,
    ``model_config``, ``labels``, ``preprocess``, ``epoch``, ``metrics`` and so on. With ``arch`` given,
    a checkpoint of another architecture raises :class:`CheckpointError` (one line that says what to do).
    """
    payload = read_checkpoint(path)
    check_arch(payload, arch, path)
    model = model_from(payload, path)
    return model, {k: v for k, v in payload.items() if k not in TRAINING_STATE}
