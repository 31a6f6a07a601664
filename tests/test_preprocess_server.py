"""Preprocessing of encoded bytes (the server's path): the same pixels as a decoded image gets, any colour
mode, EXIF, limits, corrupt input."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from resnet_serve.formats.decode import PILLOW_MAX_PIXELS
from resnet_serve.formats.errors import ImageError, InvalidInput
from resnet_serve.formats.preprocess import (
    ImageLimits,
    Preprocessor,
    PreprocessSpec,
    eval_pixels,
    normalize_array,
)

RGB_SPEC: dict[str, Any] = {
    "color": "RGB", "resize": 36, "crop": 32, "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}  # fmt: skip
GRAY_SPEC: dict[str, Any] = {
    "color": "L", "resize": 16, "crop": 16, "interpolation": "bicubic", "mean": [0.5], "std": [0.25],
}  # fmt: skip


def encode(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(size: tuple[int, int] = (97, 61)) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg")).resize(size, Image.Resampling.BICUBIC)


def contract(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """The contract applied to a decoded image (training evaluation and export parity use this path)."""
    return np.asarray(normalize_array(eval_pixels(img, spec)[None], spec)[0])


def preprocessor(spec: dict[str, Any], **limits: Any) -> Preprocessor:
    return Preprocessor(PreprocessSpec.from_dict(spec), ImageLimits(**limits))


@pytest.mark.parametrize("spec", [RGB_SPEC, GRAY_SPEC])
@pytest.mark.parametrize("size", [(97, 61), (61, 97), (36, 36), (20, 300)])
def test_png_matches_the_training_contract_exactly(spec: dict[str, Any], size: tuple[int, int]) -> None:
    img = photo(size)
    got = preprocessor(spec)(encode(img))
    assert got.dtype == np.float32
    assert got.shape == (len(spec["mean"]), spec["crop"], spec["crop"])
    np.testing.assert_array_equal(got, contract(img, spec))


def test_every_colour_mode_becomes_the_models_colour() -> None:
    base = photo((40, 40))
    images = {
        "1": base.convert("1"),
        "L": base.convert("L"),
        "LA": base.convert("LA"),
        "P": base.convert("P"),
        "RGBA": base.convert("RGBA"),
        "CMYK": base.convert("CMYK"),
    }
    transparent = base.convert("P")
    transparent.info["transparency"] = 0
    for spec in (RGB_SPEC, GRAY_SPEC):
        pre = preprocessor(spec)
        for mode, img in images.items():
            fmt = "JPEG" if mode == "CMYK" else "PNG"
            got = pre(encode(img, fmt))
            assert got.shape == (len(spec["mean"]), spec["crop"], spec["crop"]), mode
            assert np.isfinite(got).all(), mode
        assert pre(encode(transparent, "PNG", transparency=0)).shape[0] == len(spec["mean"])
    # A grey image becomes three equal channels for an RGB model.
    rgb = preprocessor(RGB_SPEC).decode(encode(images["L"]))
    r, g, b = (np.asarray(c) for c in rgb.split())
    assert np.array_equal(r, g) and np.array_equal(g, b)


def test_sixteen_bit_images_are_scaled_not_clipped() -> None:
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    decoded = np.asarray(preprocessor(GRAY_SPEC).decode(encode(img)))
    np.testing.assert_array_equal(decoded, np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_exif_orientation_is_applied() -> None:
    img = photo((48, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(img, "PNG", exif=exif)
    upright = img.transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(preprocessor(RGB_SPEC)(data), contract(upright, RGB_SPEC))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_its_header() -> None:
    # Were pixels decoded, this file would fail as truncated; the pixel limit answers first.
    with pytest.raises(ImageError) as info:
        preprocessor(RGB_SPEC, max_pixels=1_000_000)(png_header_only(12_000, 12_000))
    assert isinstance(info.value, InvalidInput)  # the server answers INVALID_ARGUMENT
    assert "12000x12000" in str(info.value) and "max_image_pixels=1000000" in str(info.value)
    with pytest.raises(ImageError) as info:  # beyond PIL's own bomb threshold, which refuses it at open
        preprocessor(RGB_SPEC, max_pixels=10**12)(png_header_only(60_000, 60_000))
    assert isinstance(info.value, InvalidInput)  # the server answers INVALID_ARGUMENT
    ceiling = f"{PILLOW_MAX_PIXELS} pixels (Pillow's ceiling)"
    assert str(info.value) == f"image is 3600000000 pixels; the limit is {ceiling}"


def test_a_bomb_beyond_pillows_ceiling_is_told_with_the_configured_limit_not_pillows() -> None:
    with pytest.raises(ImageError) as info:
        preprocessor(RGB_SPEC, max_pixels=50_000_000)(png_header_only(100_000, 100_000))
    assert isinstance(info.value, InvalidInput)
    assert str(info.value) == "image is 10000000000 pixels; the limit is max_image_pixels=50000000"


def test_encoded_size_limit_names_the_limit() -> None:
    data = encode(photo())
    with pytest.raises(ImageError) as info:
        preprocessor(RGB_SPEC, max_bytes=len(data) - 1)(data)
    assert isinstance(info.value, InvalidInput)  # the server answers INVALID_ARGUMENT
    assert f"max_image_bytes={len(data) - 1}" in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_corrupt_and_truncated_images_are_invalid_argument(fmt: str) -> None:
    data = encode(photo((200, 150)), fmt)
    for bad in (data[: len(data) // 3], b"\x00" * 100, b""):
        with pytest.raises(ImageError) as info:
            preprocessor(RGB_SPEC)(bad)
        assert isinstance(info.value, InvalidInput)  # the server answers INVALID_ARGUMENT


def test_jpeg_draft_decodes_large_photos_smaller_and_stays_within_a_grey_level() -> None:
    data = encode(photo((1600, 1200)), "JPEG", quality=92)
    spec = {**RGB_SPEC, "resize": 64, "crop": 64}
    fast, exact = preprocessor(spec, jpeg_draft=True), preprocessor(spec, jpeg_draft=False)
    assert max(fast.decode(data).size) < 1600  # decoded at reduced size
    assert exact.decode(data).size == (1600, 1200)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
    diff = np.abs(fast(data) - exact(data)) * std * 255  # back in grey levels
    assert diff.mean() < 1.0
    # A small target relative to the photo is where draft applies; a large one decodes in full.
    big_target = {**RGB_SPEC, "resize": 512, "crop": 448}
    assert preprocessor(big_target, jpeg_draft=True).decode(data).size == (1600, 1200)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"color": "CMYK"}, "color"),
        ({"interpolation": "cubic-ish"}, "interpolation"),
        ({"mean": [0.5, 0.5]}, "mean/std"),
        ({"crop": 40}, "crop"),
    ],
)
def test_bad_preprocess_metadata_is_rejected(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessSpec.from_dict({**RGB_SPEC, **change})


@pytest.mark.parametrize("mode", ["L", "I;16", "LA", "1"])
def test_grey_images_for_an_rgb_model_match_the_contract_though_resized_before_turning_rgb(mode: str) -> None:
    # The server resizes grey pixels and replicates the channels afterwards (a third of the memory and
    # work); the contract converts first. The pixels must be the same.
    grey = photo((97, 61)).convert("L")
    img = {
        "L": grey,
        "I;16": Image.fromarray(np.asarray(grey).astype(np.uint16) * 257),
        "LA": grey.convert("LA"),
        "1": grey.convert("1"),
    }[mode]
    assert img.mode == mode
    np.testing.assert_array_equal(preprocessor(RGB_SPEC)(encode(img)), contract(img, RGB_SPEC))


@pytest.mark.slow
def test_every_digit_gets_the_same_pixels_from_the_one_step_resize_as_from_resize_then_crop() -> None:
    # Why the digits' top-1 cannot move with the one-step resize+crop: for their geometry (8×8 → resize 32,
    # crop 32) it is the same resampling, pixel for pixel, for all 1797 of them, through the server's path.
    from sklearn.datasets import load_digits

    from resnet_serve.formats.preprocess import center_crop, resize_crop, resize_shorter, to_uint8_chw
    from resnet_serve.training.data import DIGITS_PREPROCESS as DIGITS

    spec = {**DIGITS, "mean": [0.5], "std": [0.25]}
    pre = preprocessor(spec)
    for values in load_digits().images:
        img = Image.fromarray(np.round(values * 255.0 / 16.0).astype(np.uint8))
        two_step = to_uint8_chw(center_crop(resize_shorter(img, 32, "bilinear"), 32))
        np.testing.assert_array_equal(to_uint8_chw(resize_crop(img, 32, 32, "bilinear")), two_step)
        np.testing.assert_array_equal(pre(encode(img)), normalize_array(two_step[None], spec)[0])
