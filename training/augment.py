"""Batch augmentation on tensors, driven by an explicit ``torch.Generator`` so runs (and resumes) repeat.

Pixels arrive as uint8 (N, C, R, R); the output is the normalised float model input (N, C, crop, crop).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

AUGMENTS = ("affine", "crop_flip", "none")


def normalize(pixels: torch.Tensor, preprocess: dict[str, Any]) -> torch.Tensor:
    """uint8 or [0, 1] float (N, C, H, W) → (x − mean)/std, as float32."""
    x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels
    mean = torch.tensor(preprocess["mean"], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocess["std"], device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def random_affine(
    x: torch.Tensor, gen: torch.Generator, degrees: float = 10.0, scale: float = 0.1, translate: float = 0.1
) -> torch.Tensor:
    """Small rotation, scale and shift of [0, 1] images, zero (background) filled; never mirrors, so a
    digit stays the digit it is."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=gen)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = 1.0 + (u[:, 1] * 2 - 1) * scale
    tx, ty = ((u[:, 2] * 2 - 1) * translate * 2, (u[:, 3] * 2 - 1) * translate * 2)  # grid spans [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop_flip(x: torch.Tensor, crop: int, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``crop``×``crop`` window (zero padding of ``pad`` when there is no margin) and a horizontal
    flip for half of the batch."""
    if x.shape[-1] == crop:
        x = F.pad(x, (pad, pad, pad, pad))
    n, room = x.shape[0], x.shape[-1] - crop
    off = torch.randint(0, room + 1, (n, 2), generator=gen).to(x.device)
    span = torch.arange(crop, device=x.device)
    rows = (off[:, 0, None] + span)[:, :, None]
    cols = (off[:, 1, None] + span)[:, None, :]
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    cols = torch.where(flip[:, None, None], off[:, 1, None, None] + crop - 1 - span[None, None, :], cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x[batch, :, rows, cols].permute(0, 3, 1, 2)


def augment(
    pixels: torch.Tensor, kind: str, preprocess: dict[str, Any], gen: torch.Generator
) -> torch.Tensor:
    """Training batch: uint8 (N, C, R, R) → augmented, normalised float32 (N, C, crop, crop)."""
    x = pixels.float() / 255.0
    crop = int(preprocess["crop"])
    if kind == "affine":
        x = random_affine(x, gen)
    elif kind == "crop_flip":
        x = random_crop_flip(x, crop, gen)
    elif kind != "none":
        raise ValueError(f"unknown augmentation {kind!r}; known: {', '.join(AUGMENTS)}")
    if x.shape[-1] != crop:  # "affine"/"none" on a margin: take the centre, like evaluation does
        o = (x.shape[-1] - crop) // 2
        x = x[..., o : o + crop, o : o + crop]
    return normalize(x, preprocess)
