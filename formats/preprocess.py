"""Encoded image bytes → the model's input tensor, per the preprocessing contract (docs/architecture.md).

decode → EXIF transpose → convert to the model's colour ("L" or "RGB") → resize the shorter side to `resize`
(PIL, the model's interpolation) → centre crop `crop`×`crop` → float32 /255 → (x − mean)/std → CHW.

Untrusted input is bounded twice: by its encoded size, and by its pixel count read from the header before
any pixel is decoded (PIL opens lazily), so a decompression bomb costs a header parse. Every failure is a
ServeError with INVALID_ARGUMENT naming what was expected. Runs on a thread pool, never on the event loop.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_serve.server.errors import ServeError, invalid_argument

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
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
        """Validate the metadata dict; raises ValueError naming the bad key."""
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
            raise ValueError(f"preprocess metadata lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"preprocess metadata is malformed: {exc}") from None
        if spec.color not in ("L", "RGB"):
            raise ValueError(f"preprocess color must be 'L' or 'RGB', got {spec.color!r}")
        if spec.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocess interpolation must be one of {', '.join(INTERPOLATIONS)}")
        if len(spec.mean) != spec.channels or len(spec.std) != spec.channels or 0.0 in spec.std:
            raise ValueError(f"preprocess mean/std need {spec.channels} value(s) (std non-zero)")
        if not 1 <= spec.crop <= spec.resize:
            raise ValueError(f"preprocess crop must be in 1..resize ({spec.resize}), got {spec.crop}")
        return spec

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"preprocess metadata is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("preprocess metadata must be a JSON object")
        return cls.from_dict(raw)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    jpeg_draft: bool = True


class Preprocessor:
    """Turns encoded images into one model's input rows; thread-safe (no mutable state)."""

    def __init__(self, spec: PreprocessSpec, limits: ImageLimits) -> None:
        self.spec = spec
        self.limits = limits
        shape = (spec.channels, 1, 1)
        self._mean = np.asarray(spec.mean, dtype=np.float32).reshape(shape)
        self._std = np.asarray(spec.std, dtype=np.float32).reshape(shape)

    def __call__(self, data: bytes) -> np.ndarray:
        """One encoded image → float32 array (C, crop, crop)."""
        img = self.decode(data)
        img = self.resize_and_crop(img)
        return self.normalize(np.asarray(img, dtype=np.uint8))

    def decode(self, data: bytes) -> Image.Image:
        """Decode within the limits, EXIF-transposed and converted to the model's colour mode."""
        limits = self.limits
        if not data:
            raise invalid_argument("image is empty; expected the bytes of a PNG, JPEG or WebP file")
        if len(data) > limits.max_bytes:
            raise invalid_argument(
                f"image is {len(data)} bytes; the limit is max_image_bytes={limits.max_bytes}"
            )
        try:
            with warnings.catch_warnings():
                # Our own limit is checked below; PIL's bomb warning would only be noise in the log.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img: Image.Image = Image.open(io.BytesIO(data))
                width, height = img.size
                if width * height > limits.max_pixels:
                    raise invalid_argument(
                        f"image is {width}x{height} = {width * height} pixels; the limit is "
                        f"max_image_pixels={limits.max_pixels}"
                    )
                if width < 1 or height < 1:
                    raise invalid_argument(f"image has no pixels ({width}x{height})")
                if limits.jpeg_draft and img.format == "JPEG":
                    self._draft(img)
                img.load()
                img = ImageOps.exif_transpose(img)
                return self._to_color(img)
        except ServeError:
            raise
        except Image.DecompressionBombError as exc:  # PIL's own ceiling, checked inside open()
            raise invalid_argument(f"image is too large to decode: {exc}") from None
        except UnidentifiedImageError:
            raise invalid_argument(
                "image bytes are not a decodable image; expected a PNG, JPEG, WebP, BMP, GIF or TIFF file"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            # Truncated or corrupt files fail during load() with OSError/SyntaxError and a PIL message.
            raise invalid_argument(f"image is corrupt or truncated ({exc})") from None

    def _draft(self, img: Image.Image) -> None:
        target = self.spec.resize * DRAFT_MARGIN
        width, height = img.size
        shorter = min(width, height)
        if shorter < 2 * target:
            return
        # draft() picks the largest DCT scale (1/2, 1/4, 1/8) whose output is at least the requested size.
        scale = shorter / target
        img.draft(None, (max(1, int(width / scale)), max(1, int(height / scale))))  # type: ignore[arg-type]

    def _to_color(self, img: Image.Image) -> Image.Image:
        color = self.spec.color
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

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        spec = self.spec
        width, height = img.size
        if min(width, height) != spec.resize:
            if width <= height:
                size = (spec.resize, max(1, round(height * spec.resize / width)))
            else:
                size = (max(1, round(width * spec.resize / height)), spec.resize)
            img = img.resize(size, INTERPOLATIONS[spec.interpolation])
            width, height = img.size
        left = round((width - spec.crop) / 2.0)
        top = round((height - spec.crop) / 2.0)
        return img.crop((left, top, left + spec.crop, top + spec.crop))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 HW or HWC → float32 CHW, (x/255 − mean)/std in the contract's order of operations."""
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return self.normalize_chw(chw)

    def normalize_chw(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., C, H, W) → float32 (x/255 − mean)/std; leading dimensions (a batch) broadcast."""
        out: np.ndarray = (pixels.astype(np.float32) / np.float32(255.0) - self._mean) / self._std
        return out
