"""Real images, preprocessed by the contract, to compare and calibrate models on.

Sources, in order of preference: an image folder the user names; the digits held-out split for models trained
on digits; otherwise scikit-learn's two sample photos and deterministic variations of them (flips and
off-centre crops), so a check never runs on random noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from resnet_serve.export.errors import ExportError
from resnet_serve.formats.preprocess import eval_pixels, normalize_array

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def preprocess_images(images: list[Image.Image], preprocess: dict[str, Any]) -> NDArray[np.float32]:
    """PIL images → float32 (N, C, crop, crop) model input, exactly as the server prepares them."""
    pixels = np.stack([eval_pixels(img, preprocess) for img in images])
    return normalize_array(pixels, preprocess)


def folder_images(folder: Path, limit: int | None = None) -> list[Image.Image]:
    """Decoded images under `folder` (recursively, sorted by path so runs are reproducible)."""
    if not folder.is_dir():
        raise ExportError(f"no such image folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ExportError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    out = []
    for f in files:
        try:
            with Image.open(f) as img:
                img.load()
                out.append(img.copy())
        except (OSError, Image.DecompressionBombError) as exc:
            raise ExportError(f"cannot read image {f}: {exc}") from None
    return out


def sample_photos(count: int = 8) -> list[Image.Image]:
    """scikit-learn's china/flower photos plus flips and shifted crops: real image statistics, no download."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(np.asarray(a, dtype=np.uint8)) for a in load_sample_images().images]
    out: list[Image.Image] = []
    for i in range(count):
        img = photos[i % len(photos)]
        variant = i // len(photos)
        if variant % 2 == 1:
            img = ImageOps.mirror(img)
        if variant >= 2:
            w, h = img.size
            # A shifted square crop: the centre crop of the contract then sees a different part of the scene.
            side = min(w, h) * 3 // 4
            dx = (variant * 37) % (w - side)
            dy = (variant * 23) % (h - side)
            img = img.crop((dx, dy, dx + side, dy + side))
        out.append(img)
    return out


def digits_held_out(
    preprocess: dict[str, Any],
    limit: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The digits held-out split (the one training evaluates on), preprocessed, with its labels."""
    from resnet_serve.training.data import digits_holdout

    images, labels = digits_holdout()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return preprocess_images(list(images), preprocess), np.asarray(labels, dtype=np.int64)


def is_digits(labels: list[str], preprocess: dict[str, Any]) -> bool:
    """Our ONNX metadata does not name the data set: a grey "0".."9" classifier is the digits model."""
    return preprocess.get("color") == "L" and labels == [str(d) for d in range(10)]


def digits_training(preprocess: dict[str, Any], limit: int | None = None) -> NDArray[np.float32]:
    """The digits training split, preprocessed: what calibration should see (never the held-out images)."""
    from resnet_serve.training.data import load_digits_split

    pixels = load_digits_split().train_pixels.numpy()
    crop = int(preprocess["crop"])
    top = (pixels.shape[-2] - crop) // 2
    left = (pixels.shape[-1] - crop) // 2
    pixels = pixels[..., top : top + crop, left : left + crop]
    if limit is not None:
        # A stride through the whole split rather than its first rows keeps every class represented.
        pixels = pixels[:: max(1, len(pixels) // limit)][:limit]
    return normalize_array(np.ascontiguousarray(pixels), preprocess)


def calibration_batch(
    labels: list[str], preprocess: dict[str, Any], images_dir: Path | None, limit: int
) -> NDArray[np.float32]:
    """Calibration inputs: the named folder, else the digits training split for the digits model."""
    if images_dir is not None:
        return preprocess_images(folder_images(images_dir, limit), preprocess)
    if is_digits(labels, preprocess):
        return digits_training(preprocess, limit)
    raise ExportError("calibration needs real training images of this model: pass --images DIR")


def evaluation_batch(
    preprocess: dict[str, Any], dataset: str | None, images_dir: Path | None, limit: int
) -> tuple[NDArray[np.float32], NDArray[np.int64] | None]:
    """Inputs (and labels, where known) to compare stages on: the folder, the digits split, or the photos."""
    if images_dir is not None:
        return preprocess_images(folder_images(images_dir, limit), preprocess), None
    if dataset == "digits":
        return digits_held_out(preprocess, limit)
    return preprocess_images(sample_photos(limit), preprocess), None
