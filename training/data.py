"""Data sets held in memory as uint8 pixels: scikit-learn digits, an ImageFolder-style directory, CIFAR-10.

Every loader returns an :class:`ImageSplit`: training pixels (augmented per batch by :mod:`training.augment`),
held-out pixels made by exactly the preprocessing contract, the class names, and the ``preprocess`` dict
(with mean/std measured on the training pixels) that goes into the checkpoint and from there to the server.
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from resnet_serve.formats.preprocess import center_crop, eval_pixels, prepare, to_uint8_chw
from resnet_serve.models.errors import DatasetError

DATASETS = ("digits", "folder", "cifar10")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0  # fixed, independent of --seed, so every run and the demo see the same held-out images


@dataclass(frozen=True)
class ImageSplit:
    """A data set in memory.

    ``train_pixels`` is uint8 (N, C, R, R) with R ≥ crop (random crops come from the margin);
    ``test_pixels`` is uint8 (M, C, crop, crop), exactly what the server's preprocessing produces before /255.
    ``augment`` names the training augmentation: ``"affine"`` (digits: no flips) or ``"crop_flip"``.
    """

    train_pixels: torch.Tensor
    train_labels: torch.Tensor
    test_pixels: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    preprocess: dict[str, Any]
    augment: str


def _stats(pixels: NDArray[np.uint8]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) pixels on the [0, 1] scale."""
    x = pixels.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return [round(float(m), 6) for m in mean], [round(float(max(s, 1e-3)), 6) for s in std]


def _stratified_split(labels: NDArray[np.int64], fraction: float, seed: int) -> tuple[NDArray[np.intp], ...]:
    """Indices (train, test): ``fraction`` of each class held out, chosen by a seeded shuffle."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def _split(
    train: NDArray[np.uint8],
    train_y: NDArray[np.int64],
    test: NDArray[np.uint8],
    test_y: NDArray[np.int64],
    classes: list[str],
    preprocess: dict[str, Any],
    augment: str,
) -> ImageSplit:
    mean, std = _stats(train)
    return ImageSplit(
        torch.from_numpy(np.ascontiguousarray(train)),
        torch.from_numpy(train_y.astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(test)),
        torch.from_numpy(test_y.astype(np.int64)),
        classes,
        {**preprocess, "mean": mean, "std": std},
        augment,
    )


# --- scikit-learn digits ---------------------------------------------------------------------------------

DIGITS_PREPROCESS: dict[str, Any] = {"color": "L", "resize": 32, "crop": 32, "interpolation": "bilinear"}


def _digit_image(values: NDArray[np.float64]) -> Image.Image:
    """8×8 digit (0..16) → uint8 "L" image with round(v·255/16), as the contract prescribes."""
    return Image.fromarray(np.round(values * 255.0 / 16.0).astype(np.uint8))  # 2-D uint8 → "L"


def _digits() -> tuple[list[Image.Image], NDArray[np.int64], NDArray[np.intp], NDArray[np.intp]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    images = [_digit_image(v) for v in bunch.images]
    train, test = _stratified_split(labels, HOLDOUT_FRACTION, SPLIT_SEED)
    return images, labels, train, test


def digits_holdout() -> tuple[list[Image.Image], list[int]]:
    """The held-out digits as 8×8 uint8 PIL "L" images (before any resize) and their labels.

    These are the images the trained model was never fitted on; write them as PNG and send them through the
    server to check end-to-end accuracy (the server's preprocessing turns them into the model's input).
    """
    images, labels, _, test = _digits()
    return [images[i] for i in test], [int(labels[i]) for i in test]


def load_digits_split() -> ImageSplit:
    """scikit-learn's 1,797 digits: a fixed stratified 80/20 split (1,437 train / 360 held out)."""
    images, labels, train, test = _digits()
    pixels = np.stack([eval_pixels(img, DIGITS_PREPROCESS) for img in images])
    return _split(
        pixels[train],
        labels[train],
        pixels[test],
        labels[test],
        [str(d) for d in range(10)],
        DIGITS_PREPROCESS,
        "affine",
    )


def digits_preprocess() -> dict[str, Any]:
    """The preprocess dict (with the training split's mean/std) that a digits checkpoint carries."""
    return load_digits_split().preprocess


# --- ImageFolder-style directory ---------------------------------------------------------------------------


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class sub-folders (sorted) and their image files; one-line errors for what rules training out."""
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist: pass --data DIR holding one sub-folder per class"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*")):
                break  # the whole tree is empty: report that below instead of the first empty folder
            raise DatasetError(
                f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                "add images to it or remove it"
            )
        samples += [(f, label) for f in files]
    if not samples:
        raise DatasetError(
            f"no images found under {root}: expected one sub-folder per class holding "
            ".jpg/.png files (e.g. {root}/cat/1.jpg)"
        )
    if len(class_dirs) < 2:
        raise DatasetError(f"{root} holds a single class folder: a classifier needs at least two classes")
    return [d.name for d in class_dirs], samples


def _decode(path: Path, preprocess: dict[str, Any]) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """One file → (training pixels: resized, square centre crop of side ``resize``; held-out pixels)."""
    try:
        with Image.open(path) as raw:
            raw.load()
            img = prepare(raw, preprocess)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(f"cannot read image {path} ({reason}): fix or remove the file") from None
    return to_uint8_chw(center_crop(img, preprocess["resize"])), to_uint8_chw(
        center_crop(img, preprocess["crop"])
    )


def _decode_all(
    samples: list[tuple[Path, int]],
    preprocess: dict[str, Any],
    workers: int,
    desc: str,
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pairs = list(
            tqdm(
                pool.map(lambda s: _decode(s[0], preprocess), samples),
                total=len(samples),
                desc=desc,
                unit="img",
                leave=False,
                # Under torchrun only rank 0 shows progress, and only on a terminal (None: no \r in pipes).
                disable=None if os.environ.get("RANK", "0") == "0" else True,
            )
        )
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def folder_preprocess(color: str, image_size: int) -> dict[str, Any]:
    """Resize the shorter side to size·8/7, centre crop ``image_size`` (ImageNet's 256→224 ratio)."""
    return {
        "color": color,
        "resize": round(image_size * 8 / 7),
        "crop": image_size,
        "interpolation": "bilinear",
    }


def load_folder(root: Path, color: str = "RGB", image_size: int = 64, workers: int = 2) -> ImageSplit:
    """``root/<class>/*.jpg``; with ``root/train`` and ``root/val`` (or ``test``) those are the splits,
    otherwise a fixed stratified 20 % of each class is held out."""
    preprocess = folder_preprocess(color, image_size)
    held = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held is not None:
        classes, train_s = _scan(root / "train")
        test_classes, test_s = _scan(held)
        if test_classes != classes:
            raise DatasetError(
                f"{held} has classes {test_classes} but {root / 'train'} has {classes}: "
                "give both splits the same class folders"
            )
    else:
        classes, samples = _scan(root)
        labels = np.array([s[1] for s in samples], dtype=np.int64)
        if np.bincount(labels).min() < 2:
            raise DatasetError(f"every class folder under {root} needs at least 2 images to hold one out")
        tr, te = _stratified_split(labels, HOLDOUT_FRACTION, SPLIT_SEED)
        train_s, test_s = [samples[i] for i in tr], [samples[i] for i in te]
    train, _ = _decode_all(train_s, preprocess, workers, "decode train")
    _, test = _decode_all(test_s, preprocess, workers, "decode held-out")
    return _split(
        train,
        np.array([s[1] for s in train_s]),
        test,
        np.array([s[1] for s in test_s]),
        classes,
        preprocess,
        "crop_flip",
    )


# --- CIFAR-10 python batches --------------------------------------------------------------------------------

CIFAR_PREPROCESS: dict[str, Any] = {"color": "RGB", "resize": 32, "crop": 32, "interpolation": "bilinear"}


def _read_batch(path: Path) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise DatasetError(
            f"cannot read CIFAR-10 batch {path} ({type(err).__name__}: {err}): "
            "expected the python pickle format of cifar-10-python.tar.gz"
        ) from None
    if len(labels) != len(data):
        raise DatasetError(f"CIFAR-10 batch {path} has {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar10(root: Path) -> ImageSplit:
    """The CIFAR-10 python format: ``data_batch_*`` for training, ``test_batch`` held out, names from
    ``batches.meta``. ``root`` may also be the folder that holds ``cifar-10-batches-py``."""
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files or not (root / "test_batch").is_file():
        raise DatasetError(
            f"{root} holds no CIFAR-10 batches: pass --data DIR with data_batch_1..5 and "
            "test_batch (the extracted cifar-10-python.tar.gz)"
        )
    parts = [_read_batch(p) for p in train_files]
    test, test_y = _read_batch(root / "test_batch")
    train_y = np.concatenate([p[1] for p in parts])
    classes = [str(i) for i in range(int(max(train_y.max(), test_y.max())) + 1)]
    meta = root / "batches.meta"
    if meta.is_file():
        with meta.open("rb") as f:
            names = pickle.load(f, encoding="bytes").get(b"label_names", [])
        if len(names) >= len(classes):
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return _split(
        np.concatenate([p[0] for p in parts]), train_y, test, test_y, classes, CIFAR_PREPROCESS, "crop_flip"
    )


def load(
    name: str,
    data: Path | None = None,
    color: str = "RGB",
    image_size: int = 64,
    workers: int = 2,
) -> ImageSplit:
    """Load a data set by name (``digits``, ``folder``, ``cifar10``); the last two need ``data``."""
    if name == "digits":
        if data is not None:  # silently training on digits when the user pointed at their data is worse
            raise DatasetError(
                f"--data {data} is for --dataset folder or cifar10; digits is built in (drop --data, "
                "or add --dataset folder)"
            )
        return load_digits_split()
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if data is None:
        raise DatasetError(f"--dataset {name} needs --data PATH")
    return load_folder(data, color, image_size, workers) if name == "folder" else load_cifar10(data)
