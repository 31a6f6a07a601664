"""The preprocessing contract (docs/architecture.md), the same in training evaluation and in the server.

decode → EXIF transpose → convert to ``color`` → resize shorter side to ``resize`` → centre crop ``crop`` →
float32 /255 → (x − mean)/std → NCHW. This module holds the PIL part; normalisation happens on tensors.
No torch here, so anything may import it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_shorter(img: Image.Image, size: int, interpolation: str) -> Image.Image:
    """Scale so the shorter side is ``size``; the longer side is rounded to the nearest pixel."""
    w, h = img.size
    if min(w, h) == size:
        return img
    new = (size, max(1, round(h * size / w))) if w <= h else (max(1, round(w * size / h)), size)
    return img.resize(new, INTERPOLATIONS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size``×``size`` square (offsets rounded like torchvision's CenterCrop)."""
    w, h = img.size
    left = round((w - size) / 2.0)
    top = round((h - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def prepare(img: Image.Image, color: str, resize: int, interpolation: str) -> Image.Image:
    """EXIF transpose, colour conversion and shorter-side resize: every step before the crop."""
    img = ImageOps.exif_transpose(img)
    if img.mode != color:
        img = img.convert(color)
    return resize_shorter(img, resize, interpolation)


def to_uint8_chw(img: Image.Image) -> NDArray[np.uint8]:
    """PIL image → uint8 array (C, H, W)."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def eval_pixels(img: Image.Image, preprocess: dict[str, Any]) -> NDArray[np.uint8]:
    """The contract up to (not including) /255 and normalisation: uint8 (C, crop, crop)."""
    img = prepare(img, preprocess["color"], preprocess["resize"], preprocess["interpolation"])
    return to_uint8_chw(center_crop(img, preprocess["crop"]))


def normalize_array(pixels: NDArray[np.uint8], preprocess: dict[str, Any]) -> NDArray[np.float32]:
    """uint8 (N, C, H, W) → float32 (x/255 − mean)/std, the model's input."""
    mean = np.asarray(preprocess["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocess["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) / np.float32(255.0)) - mean) / std
