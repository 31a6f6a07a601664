"""The training recipe's settings: one frozen, typed, validated value instead of a dict of flag strings.

A `TrainConfig` defines a run; it is stored in every checkpoint (as the dict `to_dict` returns, under
``train_config``) so that ``--resume`` continues with exactly the same settings. `TrainOptions` says how this
one invocation runs (where to write, which device) and is not stored.

Messages name the command-line flags because that is where a user sets these values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from resnet_serve.models import registry
from resnet_serve.models.checkpoint import check_arch
from resnet_serve.models.errors import CheckpointError, ModelsError

Dataset = Literal["digits", "folder", "cifar10"]
Optimizer = Literal["sgd", "adamw"]
Amp = Literal["auto", "off", "bf16", "fp16"]
Color = Literal["RGB", "L"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings that define a run; a resumed run takes them from the checkpoint so it continues exactly."""

    arch: str = "resnet20"
    dataset: Dataset = "digits"
    data: str | None = None  # folder/cifar10 location; a str so that the checkpoint stores plain data
    epochs: int = 20
    batch_size: int = 128  # global: split across processes
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    opt: Optimizer = "sgd"
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    seed: int = 0
    amp: Amp = "auto"
    color: Color = "RGB"
    image_size: int = 64
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        registry.check(self.arch)
        _check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        """The form stored in checkpoints (``train_config``): plain values, keys in field order."""
        return dataclasses.asdict(self)

    @classmethod
    def resumed(cls, payload: dict[str, Any], overrides: Mapping[str, Any], path: Path) -> TrainConfig:
        """The settings of the run stored in checkpoint ``payload``; ``overrides`` (settings the user gave
        explicitly) must agree with them, since a resumed run cannot change what it is."""
        stored = dict(payload["train_config"])
        if "arch" in overrides:
            check_arch(payload, overrides["arch"], path)
        for key, value in overrides.items():
            if stored.get(key) != value:
                raise CheckpointError(
                    f"--{key.replace('_', '-')} {value} differs from the resumed run's {stored.get(key)}: "
                    "drop the flag to continue that run, or train afresh without --resume"
                )
        return cls(**{f.name: stored[f.name] for f in dataclasses.fields(cls) if f.name in stored})


#: The names of TrainConfig's fields, in order (also the training flags, with ``-`` for ``_``).
RUN_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class TrainOptions:
    """How this invocation runs; not part of the run's definition, so not stored."""

    out: Path  # checkpoint path, rewritten after every epoch
    resume: Path | None = None  # continue the run stored in this checkpoint
    workers: int = 2  # threads that decode folder images
    device: str | None = None  # cpu, cuda or cuda:N; None: cuda if available
    stop_after_steps: int | None = None  # tests: stop mid-epoch without writing, like a killed process


def _check_ranges(cfg: TrainConfig) -> None:
    """Refuse numbers torch rejects with a traceback (``--lr -1``) or that train nothing (``--epochs 0``)."""
    bounds = {
        "epochs": 1, "batch_size": 1, "image_size": 1, "momentum": 0, "weight_decay": 0, "warmup_epochs": 0,
    }  # fmt: skip
    for key, low in bounds.items():
        value = getattr(cfg, key)
        if not value >= low:
            raise ModelsError(f"--{key.replace('_', '-')} must be at least {low}, got {value}")
    if not cfg.lr > 0:
        raise ModelsError(f"--lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.label_smoothing <= 1:
        raise ModelsError(f"--label-smoothing must be between 0 and 1, got {cfg.label_smoothing}")
