"""The preprocessing contract (docs/architecture.md): ONE implementation, used by training evaluation, export
parity and the server alike.

decode → EXIF transpose → convert to the model's colour ("L" or "RGB") → resize the shorter side to `resize`
(PIL, the model's interpolation) → centre crop `crop`×`crop` → float32 /255 → (x − mean)/std → CHW.

`eval_pixels` runs it on a decoded PIL image (training's held-out split, export's parity and calibration
images); `Preprocessor` runs it on untrusted encoded bytes (the server). Untrusted input is bounded twice: by
its encoded size, and by its pixel count read from the header before any pixel is decoded (PIL opens lazily),
so a decompression bomb costs a header parse. Every failure is an `ImageError` (InvalidInput) naming what was
expected. No torch here, so anything may import it.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_serve.formats.errors import ImageError, MetadataError

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# torchvision's ImageNet recipe: the preprocessing of every ImageNet-trained model (resize 256, crop 224).
IMAGENET: dict[str, Any] = {
    "color": "RGB",
    "resize": 256,
    "crop": 224,
    "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
# JPEG DCT scaling (decoding at 1/2, 1/4 or 1/8 size) is used only while the decoded shorter side stays at
# least this many times the resize target, so the resampling that follows still averages over several
# source pixels: measured on sklearn's photos, the pixels then differ from a full decode by < 1 grey level
# on average, for a 3-5x faster decode of large photos. `jpeg_draft = false` gives the exact contract.
DRAFT_MARGIN = 4
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class PreprocessSpec:
    """The `resnet_serve.preprocess` metadata of a model."""

    color: str
    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PreprocessSpec:
        """Validate the metadata dict; raises MetadataError (a ValueError) naming the bad key."""
        try:
            spec = cls(
                color=str(raw["color"]),
                resize=int(raw["resize"]),
                crop=int(raw["crop"]),
                interpolation=str(raw["interpolation"]),
                mean=tuple(float(v) for v in raw["mean"]),
                std=tuple(float(v) for v in raw["std"]),
            )
        except KeyError as exc:
            raise MetadataError(f"preprocess metadata lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"preprocess metadata is malformed: {exc}") from None
        if spec.color not in ("L", "RGB"):
            raise MetadataError(f"preprocess color must be 'L' or 'RGB', got {spec.color!r}")
        if spec.interpolation not in INTERPOLATIONS:
            raise MetadataError(f"preprocess interpolation must be one of {', '.join(INTERPOLATIONS)}")
        if len(spec.mean) != spec.channels or len(spec.std) != spec.channels or 0.0 in spec.std:
            raise MetadataError(f"preprocess mean/std need {spec.channels} value(s) (std non-zero)")
        if not 1 <= spec.crop <= spec.resize:
            raise MetadataError(f"preprocess crop must be in 1..resize ({spec.resize}), got {spec.crop}")
        return spec

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"preprocess metadata is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise MetadataError("preprocess metadata must be a JSON object")
        return cls.from_dict(raw)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    jpeg_draft: bool = True


# --- the pipeline, step by step -----------------------------------------------------------------------------


def to_color(img: Image.Image, color: str) -> Image.Image:
    """Any PIL mode → `color` ("L" or "RGB")."""
    if img.mode == color:
        return img
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        # PIL's own I;16 → L conversion clips at 255 instead of scaling; scale the full range to 8 bits.
        # Float images are taken to be on the 0..255 scale, like 8-bit ones.
        arr = np.asarray(img, dtype=np.float64)
        scale = 1.0 if img.mode == "F" else 255.0 / 65535.0
        gray = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
        return gray if color == "L" else gray.convert(color)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette's transparency is dropped in one step
    if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"):
        img = img.convert("RGB")
    return img.convert(color)


def upright(img: Image.Image, color: str) -> Image.Image:
    """EXIF transpose, then colour conversion: the steps between decoding and resizing."""
    return to_color(ImageOps.exif_transpose(img), color)


def resize_shorter(img: Image.Image, size: int, interpolation: str) -> Image.Image:
    """Scale so the shorter side is `size`; the longer side is rounded to the nearest pixel."""
    w, h = img.size
    if min(w, h) == size:
        return img
    new = (size, max(1, round(h * size / w))) if w <= h else (max(1, round(w * size / h)), size)
    return img.resize(new, INTERPOLATIONS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central `size`×`size` square (offsets rounded like torchvision's CenterCrop)."""
    w, h = img.size
    left = round((w - size) / 2.0)
    top = round((h - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def to_uint8_chw(img: Image.Image) -> NDArray[np.uint8]:
    """PIL image → uint8 array (C, H, W)."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _normalize(
    pixels: NDArray[Any], mean: NDArray[np.float32], std: NDArray[np.float32]
) -> NDArray[np.float32]:
    # The contract's order of operations; mean/std are (C, 1, 1), so any leading (batch) dimensions broadcast.
    out: NDArray[np.float32] = (pixels.astype(np.float32) / np.float32(255.0) - mean) / std
    return out


def _channel_stats(mean: Any, std: Any) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    return (
        np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1),
        np.asarray(std, dtype=np.float32).reshape(-1, 1, 1),
    )


# --- decoded images (training evaluation, export parity) ----------------------------------------------------


def prepare(img: Image.Image, preprocess: Mapping[str, Any]) -> Image.Image:
    """Every step before the crop: EXIF transpose, colour, shorter-side resize. `preprocess` needs color,
    resize and interpolation (training measures mean/std afterwards)."""
    img = upright(img, preprocess["color"])
    return resize_shorter(img, preprocess["resize"], preprocess["interpolation"])


def eval_pixels(img: Image.Image, preprocess: Mapping[str, Any]) -> NDArray[np.uint8]:
    """The contract up to (not including) /255 and normalisation: uint8 (C, crop, crop)."""
    return to_uint8_chw(center_crop(prepare(img, preprocess), preprocess["crop"]))


def normalize_array(pixels: NDArray[np.uint8], preprocess: Mapping[str, Any]) -> NDArray[np.float32]:
    """uint8 (..., C, H, W) → float32 (x/255 − mean)/std, the model's input."""
    return _normalize(pixels, *_channel_stats(preprocess["mean"], preprocess["std"]))


# --- encoded bytes (the server) -----------------------------------------------------------------------------


class Preprocessor:
    """Turns encoded images into one model's input rows; thread-safe (no mutable state)."""

    def __init__(self, spec: PreprocessSpec, limits: ImageLimits) -> None:
        self.spec = spec
        self.limits = limits
        self._mean, self._std = _channel_stats(spec.mean, spec.std)

    def __call__(self, data: bytes) -> NDArray[np.float32]:
        """One encoded image → float32 array (C, crop, crop)."""
        spec = self.spec
        img = resize_shorter(self.decode(data), spec.resize, spec.interpolation)
        return self.normalize_chw(to_uint8_chw(center_crop(img, spec.crop)))

    def decode(self, data: bytes) -> Image.Image:
        """Decode within the limits, EXIF-transposed and converted to the model's colour mode."""
        limits = self.limits
        if not data:
            raise ImageError("image is empty; expected the bytes of a PNG, JPEG or WebP file")
        if len(data) > limits.max_bytes:
            raise ImageError(f"image is {len(data)} bytes; the limit is max_image_bytes={limits.max_bytes}")
        try:
            with warnings.catch_warnings():
                # Our own limit is checked below; PIL's bomb warning would only be noise in the log.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img: Image.Image = Image.open(io.BytesIO(data))
                width, height = img.size
                if width * height > limits.max_pixels:
                    raise ImageError(
                        f"image is {width}x{height} = {width * height} pixels; the limit is "
                        f"max_image_pixels={limits.max_pixels}"
                    )
                if width < 1 or height < 1:
                    raise ImageError(f"image has no pixels ({width}x{height})")
                if limits.jpeg_draft and img.format == "JPEG":
                    self._draft(img)
                img.load()
                return upright(img, self.spec.color)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:  # PIL's own ceiling, checked inside open()
            raise ImageError(f"image is too large to decode: {exc}") from None
        except UnidentifiedImageError:
            raise ImageError(
                "image bytes are not a decodable image; expected a PNG, JPEG, WebP, BMP, GIF or TIFF file"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            # Truncated or corrupt files fail during load() with OSError/SyntaxError and a PIL message.
            raise ImageError(f"image is corrupt or truncated ({exc})") from None

    def _draft(self, img: Image.Image) -> None:
        target = self.spec.resize * DRAFT_MARGIN
        width, height = img.size
        shorter = min(width, height)
        if shorter < 2 * target:
            return
        # draft() picks the largest DCT scale (1/2, 1/4, 1/8) whose output is at least the requested size.
        scale = shorter / target
        img.draft(None, (max(1, int(width / scale)), max(1, int(height / scale))))  # type: ignore[arg-type]

    def normalize_chw(self, pixels: NDArray[Any]) -> NDArray[np.float32]:
        """uint8 (..., C, H, W) → float32 (x/255 − mean)/std; leading dimensions (a batch) broadcast."""
        return _normalize(pixels, self._mean, self._std)
