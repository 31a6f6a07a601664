"""Data sets: the fixed digits split and its preprocessing contract, ImageFolder and CIFAR-10 loading with
one-line errors, and batch augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from resnet_serve.formats.preprocess import eval_pixels
from resnet_serve.models.errors import DatasetError
from resnet_serve.training import data as datasets
from resnet_serve.training.augment import augment, normalize, random_crop_flip


def write_digit_folder(root: Path, classes: int = 10, per_class: int = 16, size: int = 8) -> Path:
    """Real digits as ``root/<digit>/<i>.png`` (an ImageFolder-style data set)."""
    bunch = load_digits()
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i, values in enumerate(bunch.images[bunch.target == c][:per_class]):
            img = Image.fromarray(np.round(values * 255 / 16).astype(np.uint8))
            img.resize((size, size), Image.Resampling.NEAREST).save(root / str(c) / f"{i}.png")
    return root


def test_digits_split_is_fixed_stratified_and_20_percent() -> None:
    a, b = datasets.load_digits_split(), datasets.load_digits_split()
    assert a.train_pixels.shape == (1437, 1, 32, 32) and a.test_pixels.shape == (360, 1, 32, 32)
    assert torch.equal(a.test_pixels, b.test_pixels) and torch.equal(a.train_labels, b.train_labels)
    per_class = torch.cat([a.train_labels, a.test_labels]).bincount()
    assert ((a.test_labels.bincount() - 0.2 * per_class).abs() <= 1).all()
    assert a.classes == [str(d) for d in range(10)]


def test_digits_holdout_images_follow_the_preprocessing_contract() -> None:
    images, labels = datasets.digits_holdout()
    split = datasets.load_digits_split()
    assert len(images) == 360 and labels == split.test_labels.tolist()
    assert all(img.mode == "L" and img.size == (8, 8) for img in images)
    values = set(np.unique(np.concatenate([np.asarray(img).ravel() for img in images])).tolist())
    assert values <= {round(v * 255 / 16) for v in range(17)} and 255 in values
    # What the server computes from these images is exactly the held-out tensor training evaluates.
    pixels = np.stack([eval_pixels(img, split.preprocess) for img in images])
    assert np.array_equal(pixels, split.test_pixels.numpy())
    assert split.preprocess["mean"][0] == pytest.approx(
        (split.train_pixels.float() / 255).mean().item(), abs=1e-5
    )


def test_folder_dataset_holds_out_a_fifth_of_each_class(tmp_path: Path) -> None:
    root = write_digit_folder(tmp_path / "digits", classes=3, per_class=10)
    split = datasets.load_folder(root, color="L", image_size=16)
    assert split.classes == ["0", "1", "2"]
    assert split.test_labels.bincount().tolist() == [2, 2, 2]
    assert split.train_pixels.shape == (24, 1, 18, 18) and split.test_pixels.shape == (6, 1, 16, 16)
    assert split.preprocess == {"color": "L", "resize": 18, "crop": 16, "interpolation": "bilinear",
                                "mean": split.preprocess["mean"], "std": split.preprocess["std"]}  # fmt: skip


def test_folder_dataset_uses_train_and_val_subfolders_when_present(tmp_path: Path) -> None:
    write_digit_folder(tmp_path / "d" / "train", classes=2, per_class=5)
    write_digit_folder(tmp_path / "d" / "val", classes=2, per_class=3)
    split = datasets.load_folder(tmp_path / "d", color="RGB", image_size=8)
    assert len(split.train_labels) == 10 and len(split.test_labels) == 6 and split.train_pixels.shape[1] == 3


def _one_line_error(root: Path) -> str:
    with pytest.raises(DatasetError) as err:
        datasets.load_folder(root, color="L", image_size=8)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_folder_errors_say_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    assert "does not exist" in _one_line_error(tmp_path / "missing")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    assert "no images found" in _one_line_error(tmp_path / "empty")
    root = write_digit_folder(tmp_path / "d", classes=2, per_class=4)
    (root / "zz_empty").mkdir()
    assert "zz_empty holds no images" in _one_line_error(root)
    (root / "zz_empty").rmdir()
    (root / "1" / "broken.jpg").write_bytes(b"not a jpeg at all")
    message = _one_line_error(root)
    assert "cannot read image" in message and "broken.jpg" in message


def _write_cifar(root: Path, batches: int = 2, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    first = np.empty(0, dtype=np.uint8)
    for i in range(batches + 1):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        name = f"data_batch_{i + 1}" if i < batches else "test_batch"
        with (root / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        first = data if i == 0 else first
    names = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck"]]  # fmt: skip
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    return first


def test_cifar10_python_batches_load_channel_planes_in_order(tmp_path: Path) -> None:
    first = _write_cifar(tmp_path / "cifar-10-batches-py")
    split = datasets.load_cifar10(tmp_path)  # the parent folder works too
    assert split.train_pixels.shape == (12, 3, 32, 32) and split.test_pixels.shape == (6, 3, 32, 32)
    assert split.classes[0] == "airplane" and split.classes[9] == "truck"
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
    assert split.train_pixels[0, 1, 0, 5].item() == first[0, 1024 + 5]
    assert split.preprocess["color"] == "RGB" and len(split.preprocess["mean"]) == 3


def test_cifar10_missing_or_corrupt_batches_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no CIFAR-10 batches"):
        datasets.load_cifar10(tmp_path)
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_2").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"cannot read CIFAR-10 batch .*data_batch_2"):
        datasets.load_cifar10(tmp_path / "c")


def test_crop_flip_returns_real_crops_or_their_mirrors() -> None:
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10).repeat(8, 1, 1, 1)
    out = random_crop_flip(x, 6, torch.Generator().manual_seed(1))
    assert out.shape == (16, 3, 6, 6)
    flips = 0
    for img, src in zip(out, x, strict=True):
        crops = [src[:, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]  # fmt: skip
        plain = any(torch.equal(img, c) for c in crops)
        mirrored = any(torch.equal(img, c.flip(-1)) for c in crops)
        assert plain or mirrored
        flips += mirrored
    assert 0 < flips < 16


def test_digit_augmentation_keeps_digits_recognisable_and_is_seeded() -> None:
    split = datasets.load_digits_split()
    batch = split.train_pixels[:64]
    a = augment(batch, "affine", split.preprocess, torch.Generator().manual_seed(3))
    b = augment(batch, "affine", split.preprocess, torch.Generator().manual_seed(3))
    plain = normalize(batch, split.preprocess)
    assert torch.equal(a, b) and a.shape == plain.shape
    assert not torch.equal(a, plain)

    # Small moves only: the ink's centre of mass shifts by a few pixels at most.
    def centroids(x: torch.Tensor) -> torch.Tensor:
        ink = x[:, 0] - x[:, 0].amin(dim=(1, 2), keepdim=True)
        grid = torch.arange(32, dtype=torch.float32)
        mass = ink.sum(dim=(1, 2))
        return torch.stack([(ink.sum(2) * grid).sum(1) / mass, (ink.sum(1) * grid).sum(1) / mass], 1)

    shift = (centroids(a) - centroids(plain)).norm(dim=1)
    assert shift.max().item() < 5.0 and shift.mean().item() > 0.3
    assert torch.equal(augment(batch, "none", split.preprocess, torch.Generator()), plain)
