"""What the benchmark sends: encoded images for the image API, tensors for the KServe API.

Images come from the user (a folder or a glob) or are made from data scikit-learn ships, so a benchmark
never downloads anything: its digits (8×8 grayscale, for the digits model) or its two sample photos cut
into crops (for RGB ImageNet models).
"""

from __future__ import annotations

import glob
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from resnet_serve.client.paths import IMAGE_SUFFIXES
from resnet_serve.formats.datatypes import WIRE_DTYPES
from resnet_serve.formats.errors import UserError

BUILTIN = ("auto", "digits", "photos")


class WorkloadError(UserError, ValueError):
    """The requested images or tensors cannot be prepared; the message is shown as is."""


def load_images(source: str, channels: int | None = None, limit: int = 256) -> tuple[str, list[bytes]]:
    """(a description, encoded images) for `source`: "digits", "photos", "auto", a folder or a glob.

    "auto" picks photos for a 3-channel model and digits otherwise (`channels` from ListModels).
    """
    if source == "auto":
        source = "photos" if channels == 3 else "digits"
    if source == "digits":
        return "sklearn digits (8×8 PNG)", digit_pngs(limit)
    if source == "photos":
        return "sklearn sample photos (256×256 JPEG crops)", photo_crops(min(limit, 32))
    return source, _files(source, limit)


def digit_pngs(limit: int) -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_digits

    # The same 0..16 → 0..255 mapping the preprocessing contract uses for digits.
    images = np.round(load_digits().images[:limit] * 255.0 / 16.0).astype(np.uint8)
    return [_encode(Image.fromarray(img, mode="L"), "PNG") for img in images]


def photo_crops(count: int, size: int = 256) -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = int(rng.integers(0, photo.shape[0] - size))
        x = int(rng.integers(0, photo.shape[1] - size))
        crops.append(_encode(Image.fromarray(photo[y : y + size, x : x + size]), "JPEG"))
    return crops


def _files(source: str, limit: int) -> list[bytes]:
    path = Path(source)
    if path.is_dir():
        names = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    elif path.is_file():
        names = [source]
    else:
        names = sorted(n for n in glob.glob(source, recursive=True) if Path(n).is_file())
    if not names:
        raise WorkloadError(
            f"--images {source}: no image files found (give a folder, a glob, digits or photos)"
        )
    chosen = names[:limit]
    images = [Path(n).read_bytes() for n in chosen]
    # Each file decoded once, here: a file the server cannot decode would make the benchmark measure error
    # answers, not inference. Refused rather than skipped, so the workload is exactly the files named.
    bad = [(n, why) for n, data in zip(chosen, images, strict=True) if (why := undecodable(data))]
    if bad:
        named = "; ".join(f"{n}: {why}" for n, why in bad[:3]) + (
            f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        )
        raise WorkloadError(
            f"--images {source}: {len(bad)} of {len(chosen)} files are not images a server can decode "
            f"(remove them, or name only the images): {named}"
        )
    return images


def undecodable(data: bytes) -> str:
    """Why the server's decoder (formats/decode.py, every format it can be configured for) refuses `data`,
    or "" when it decodes."""
    from resnet_serve.formats.decode import (
        ALLOWED_FORMATS,
        PILLOW_MAX_PIXELS,
        ImageLimits,
        load_upright,
        open_header,
    )
    from resnet_serve.formats.errors import ImageError

    limits = ImageLimits(max_bytes=len(data), max_pixels=PILLOW_MAX_PIXELS, formats=ALLOWED_FORMATS)
    try:
        load_upright(open_header(data, limits, "RGB", resize=256), "RGB")
    except ImageError as exc:
        return str(exc)
    return ""


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format=fmt, quality=90)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def random_tensors(shape: tuple[int, ...], datatype: str, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """`count` distinct inputs: standard normal floats (as if normalised) or uniform bytes for UINT8."""
    rng = np.random.default_rng(seed)
    if datatype in ("FP32", "FP16"):
        return [rng.standard_normal(shape).astype(WIRE_DTYPES[datatype]) for _ in range(count)]
    if datatype == "UINT8":
        return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
    raise WorkloadError(f"the model's input is {datatype}; bench sends FP32, FP16 or UINT8 tensors")
