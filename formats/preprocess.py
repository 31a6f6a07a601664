"""The preprocessing contract (docs/architecture.md): ONE implementation, used by training evaluation, export
parity and the server alike.

decode → EXIF transpose → convert to the model's colour ("L" or "RGB") → resize the shorter side to `resize`
(PIL, the model's interpolation) and centre crop `crop`×`crop`, as one resampling of the crop's source
region (`resize_crop`) → float32 /255 → (x − mean)/std → CHW.

`eval_pixels` runs it on a decoded PIL image (training's held-out split, export's parity and calibration
images); `Preprocessor` runs it on untrusted encoded bytes (the server), decoded by formats/decode.py
within the `ImageLimits`: encoded size, the format allowlist, and the pixel count read from the header
before any pixel is decoded (PIL opens lazily), so a decompression bomb costs a header parse; the header
also gives the decode's memory cost, which the server admits against its decode budget (`DecodeGate`).
Every failure is an `ImageError` (InvalidInput) naming what was expected. No torch here, so anything may
import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from resnet_serve.formats.decode import (
    DRAFT_MARGIN,
    DecodeDeferred,
    DecodeGate,
    Header,
    ImageLimits,
    finish_color,
    load_upright,
    open_header,
)
from resnet_serve.formats.errors import MetadataError

__all__ = ["DRAFT_MARGIN", "IMAGENET", "INTERPOLATIONS", "ImageLimits", "PreprocessSpec", "Preprocessor"]

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


def resize_crop(img: Image.Image, resize: int, crop: int, interpolation: str) -> Image.Image:
    """`center_crop(resize_shorter(img, resize, interpolation), crop)` as one resampling of the crop's source
    region (PIL's `box`): the pixels outside the crop are never computed (measured: half the resize time
    for a 640×427 photo → 224²). The filter weights are the same; their float rounding can move a pixel by
    one grey level (measured on sklearn's china.jpg at 256 → 224: 3% of values, mean 0.03 levels)."""
    w, h = img.size
    if min(w, h) == resize:
        return center_crop(img, crop)
    if w <= h:
        new_w, new_h = resize, max(1, round(h * resize / w))
    else:
        new_w, new_h = max(1, round(w * resize / h)), resize
    left = round((new_w - crop) / 2.0)
    top = round((new_h - crop) / 2.0)
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return img.resize((crop, crop), INTERPOLATIONS[interpolation], box=box)


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
    img = upright(img, preprocess["color"])
    resize, crop = preprocess["resize"], preprocess["crop"]
    return to_uint8_chw(resize_crop(img, resize, crop, preprocess["interpolation"]))


def normalize_array(pixels: NDArray[np.uint8], preprocess: Mapping[str, Any]) -> NDArray[np.float32]:
    """uint8 (..., C, H, W) → float32 (x/255 − mean)/std, the model's input."""
    return _normalize(pixels, *_channel_stats(preprocess["mean"], preprocess["std"]))


# --- encoded bytes (the server) -----------------------------------------------------------------------------


class Preprocessor:
    """Turns encoded images into one model's input rows; thread-safe (no mutable state).

    `pre(data)` runs the whole pipeline. With a `gate` (the server's decode budget) it decodes only when the
    gate admits the image's memory cost at once, and otherwise raises `DecodeDeferred` with the image's
    `Header`, for the server to wait on the budget and `finish` it later."""

    def __init__(self, spec: PreprocessSpec, limits: ImageLimits, gate: DecodeGate | None = None) -> None:
        self.spec = spec
        self.limits = limits
        self.gate = gate
        self._mean, self._std = _channel_stats(spec.mean, spec.std)
        # The normalisation of every uint8 value, per channel: a lookup gives bit-identical floats to the
        # arithmetic (the same float32 operations, done once per value) in a quarter of the time.
        levels = np.arange(256, dtype=np.uint8).reshape(1, 1, -1)
        self._lut = np.ascontiguousarray(self.normalize_chw(levels)[:, 0, :])

    def __call__(self, data: bytes) -> NDArray[np.float32]:
        """One encoded image → float32 array (C, crop, crop); DecodeDeferred when the gate is full."""
        header = self.inspect(data)
        gate = self.gate
        if gate is None:
            return self.finish(header)
        if not gate.try_acquire(header.cost):
            raise DecodeDeferred(header)
        try:
            return self.finish(header)
        finally:
            gate.release(header.cost)

    def inspect(self, data: bytes) -> Header:
        """The header: limits and allowlist checked, memory cost known, no pixel decoded. ImageError."""
        return open_header(data, self.limits, self.spec.color, self.spec.resize)

    def finish(self, header: Header) -> NDArray[np.float32]:
        """Decode an inspected image and run the rest of the pipeline."""
        return self.pixels(load_upright(header, self.spec.color))

    def decode(self, data: bytes) -> Image.Image:
        """Decode within the limits, EXIF-transposed and converted to the model's colour mode."""
        return finish_color(load_upright(self.inspect(data), self.spec.color), self.spec.color)

    def pixels(self, img: Image.Image) -> NDArray[np.float32]:
        """An upright image (the model's colour, or grey) → the model's input row."""
        spec = self.spec
        small = finish_color(resize_crop(img, spec.resize, spec.crop, spec.interpolation), spec.color)
        return self.normalize_hwc(np.asarray(small, dtype=np.uint8))

    def normalize_hwc(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        """uint8 (H, W) or (H, W, C) → float32 (C, H, W), normalised by lookup."""
        hwc = pixels[..., None] if pixels.ndim == 2 else pixels
        out = np.empty((hwc.shape[2], hwc.shape[0], hwc.shape[1]), dtype=np.float32)
        for c in range(out.shape[0]):
            np.take(self._lut[c], hwc[:, :, c], out=out[c])
        return out

    def normalize_chw(self, pixels: NDArray[Any]) -> NDArray[np.float32]:
        """uint8 (..., C, H, W) → float32 (x/255 − mean)/std; leading dimensions (a batch) broadcast."""
        return _normalize(pixels, self._mean, self._std)
