"""RNG-free weight fill and input of the torchvision golden-logit fixture (tests/fixtures/torchvision-resnet).

Any machine reproduces the same weights and input without random numbers, so logits can be compared with
torchvision's recorded ones, and the same fill serves parity checks after BatchNorm folding or ONNX export.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def filled_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fixture's sin-based values for every ``state_dict`` entry of ``model`` (only shapes are read, so a
    model built on the ``meta`` device works and skips the random init).

    Keys are visited in sorted order; ``i`` is the position, ``base = sin(arange(numel)·0.7 + i)``:
    running_var → 1 + 0.5·base², running_mean → 0.1·base, tensors with > 1 dim → base·√(2/fan_in),
    other ``weight`` → 0.5 + 0.1·base, anything else → 0.1·base; ``num_batches_tracked`` stays 0.
    """
    state = model.state_dict()
    filled: dict[str, torch.Tensor] = {}
    for i, key in enumerate(sorted(state)):
        t = state[key]
        if key.endswith("num_batches_tracked"):
            filled[key] = torch.zeros((), dtype=t.dtype)
            continue
        base = np.sin(np.arange(t.numel(), dtype=np.float64) * 0.7 + i).reshape(tuple(t.shape))
        if key.endswith("running_var"):
            value = 1 + 0.5 * base**2
        elif key.endswith("running_mean"):
            value = 0.1 * base
        elif t.dim() > 1:
            value = base * np.sqrt(2.0 / (t.numel() // t.shape[0]))
        elif key.endswith("weight"):
            value = 0.5 + 0.1 * base
        else:
            value = 0.1 * base
        filled[key] = torch.from_numpy(value).to(t.dtype)
    return {k: filled[k] for k in state}  # the model's own order


def deterministic_fill(model: nn.Module) -> None:
    """Load :func:`filled_state_dict` into ``model`` (strictly)."""
    model.load_state_dict(filled_state_dict(model), strict=True)


def fixture_input(batch: int = 2, size: int = 224, channels: int = 3) -> torch.Tensor:
    """The fixture's float32 input: sample ``b`` is ``sin(arange(C·H·W)·(0.013 + 0.029·b) + b)``."""
    n = channels * size * size
    samples = [np.sin(np.arange(n, dtype=np.float64) * (0.013 + 0.029 * b) + b) for b in range(batch)]
    return torch.from_numpy(np.stack(samples).reshape(batch, channels, size, size).astype(np.float32))
