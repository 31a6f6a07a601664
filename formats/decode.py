"""Untrusted encoded bytes → a PIL image in the model's colour, within limits (the decoding half of the
preprocessing contract; formats/preprocess.py does the rest).

**Which decoders run.** Only the formats in `ImageLimits.formats` are tried, through Pillow's
`Image.open(..., formats=...)`, and the plugins they need are imported here, up front, so Pillow never loads
its other plugins on demand. `ALLOWED_FORMATS` is the whole universe: formats Pillow decodes in-process
(libjpeg-turbo, zlib, libwebp, libtiff, Pillow's own GIF/BMP/PPM readers); TIFF and PPM only when
configured. EPS/PS (Pillow hands them to Ghostscript, an external program), PDF, ICO, XBM and every other
plugin are never opened. Multi-frame files (GIF, WebP, TIFF, MPO) give their first frame.

**How much memory.** `Header.cost` is an upper bound of the bytes one decode holds at its peak, computed from
the header alone (size, mode, JPEG DCT scale) before a pixel is decoded, so the server can admit decodes
against a budget (server/decode/budget.py). The decode keeps at most two full-size images alive at once
(the decoded one and one derived: EXIF-transposed or colour-converted), converts 16-bit and float images to
8 bits in strips of rows (no full-size float64 copy), and a grey image meant for an RGB model stays grey
until after the resize (replicating channels commutes with resampling, so the pixels are identical).

**JPEG.** Large JPEGs are decoded at a reduced DCT scale when `jpeg_draft` is on (see `DRAFT_MARGIN`), by
Pillow's `draft` (1/2, 1/4, 1/8) or, with the `turbo` decoder, by simplejpeg (libjpeg-turbo, any M/8 scale;
at full scale its pixels are identical to Pillow's, which wraps the same library). `CPU_DECODERS` says why
Pillow is the default.
"""

from __future__ import annotations

import importlib
import io
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Final, Protocol

import numpy as np
from PIL import (
    BmpImagePlugin,  # noqa: F401  (imported so Image.open never has to load plugins on demand)
    GifImagePlugin,  # noqa: F401
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    PpmImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401
)

from resnet_serve.formats.errors import ImageError

# Every format the server can be configured to decode (Pillow's format names), and the default set.
ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
DEFAULT_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# Pillow refuses to open an image of more pixels than this (DecompressionBombError, whatever our limit), so
# max_image_pixels cannot be set above it (server/config/settings.py).
PILLOW_MAX_PIXELS: Final = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
# What `decoder` may be in ImageLimits: "pillow", or "turbo" (JPEGs through simplejpeg, the rest through
# Pillow); the server adds "nvimgcodec" (server/decode/gpu.py). Pillow is the default because it
# measured fastest in the whole pipeline (lab/image_path.py, docs/benchmarking.md): its wheel carries
# libjpeg-turbo too, with SIMD IDCTs for the 1/2, 1/4 and 1/8 draft scales, and decodes straight into the
# image; simplejpeg's raw decode is 9-16% faster at full scale, but in the pipeline the two measured within
# the noise, and its other M/8 scales run without SIMD (no faster than Pillow's full decode) and move pixels
# more (97 grey levels at most against Pillow's 15, on 72 photo variants).
CPU_DECODERS: Final = ("pillow", "turbo")
# Every decoder the server's `image_decoder` may name: nvimgcodec decodes JPEGs on a GPU, batched per request.
DECODERS: Final = (*CPU_DECODERS, "nvimgcodec")
# JPEG DCT scaling (decoding at a fraction of the size) is used only while the decoded shorter side stays at
# least this many times the resize target, so the resampling that follows still averages over several
# source pixels: measured on sklearn's photos, the pixels then differ from a full decode by < 1 grey level
# on average, for a 3-5x faster decode of large photos. `jpeg_draft = false` gives the exact contract.
DRAFT_MARGIN: Final = 4
_SIXTEEN_BIT: Final = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Bytes per pixel of Pillow's storage of each mode (RGB is stored as 4 bytes per pixel).
_ONE_BYTE: Final = ("1", "L", "P")
_TWO_BYTES: Final = ("I;16", "I;16L", "I;16B", "I;16N")
# libwebp decodes into its own RGBA buffer, which Pillow then copies; libtiff may read through a full-size
# RGBA buffer of its own (TIFFReadRGBA*): 4 more bytes per pixel for a while.
_FORMAT_EXTRA: Final = {"WEBP": 4, "TIFF": 4}
# Modes that stay one grey channel until after the resize, whatever the model's colour (reduce_depth).
_GREY: Final = ("1", "L", "LA", "La", "I", "F", *_TWO_BYTES)
_STRIP_PIXELS: Final = 1 << 19  # rows per strip of the 16-bit conversion: ~0.5 M pixels (4 MiB of float64)
_OVERHEAD: Final = 1 << 20  # decoder state, row buffers, the small resized copies


@dataclass(frozen=True)
class ImageLimits:
    """What the server accepts from a client (server config: max_image_bytes, max_image_pixels, jpeg_draft,
    image_formats, image_decoder)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    jpeg_draft: bool = True
    formats: tuple[str, ...] = DEFAULT_FORMATS
    decoder: str = "pillow"


class DecodeGate(Protocol):
    """Admits decodes by their memory cost (server/decode/budget.py's DecodeBudget)."""

    def try_acquire(self, nbytes: int) -> bool: ...

    def release(self, nbytes: int) -> None: ...


class DecodeDeferred(Exception):
    """Raised by a gated Preprocessor when the gate cannot admit the image now; carries its Header. Not an
    error: the server catches it, waits for room, then finishes the image."""

    def __init__(self, header: Header) -> None:
        super().__init__("the decode memory budget is full")
        self.header = header


@dataclass
class Header:
    """An image opened from its header, not yet decoded (PIL opens lazily)."""

    data: bytes
    image: Image.Image  # opened with the allowlist; for Pillow JPEGs the draft scale is already set
    format: str
    size: tuple[int, int]  # the size the decode will produce (after any DCT scaling)
    declared: tuple[int, int]  # the size the header declares
    cost: int  # upper bound of the bytes the decode holds at its peak
    turbo_min: int = 0  # > 0: decode with simplejpeg, shorter side at least this (0 in min_* means full size)


def simplejpeg_module() -> ModuleType | None:
    """simplejpeg if it is installed (the `turbo` extra), else None."""
    try:
        return importlib.import_module("simplejpeg")
    except ImportError:
        return None


def _describe_formats(formats: Sequence[str]) -> str:
    names = [f if f != "WEBP" else "WebP" for f in formats]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _storage(mode: str) -> int:
    return 1 if mode in _ONE_BYTE else 2 if mode in _TWO_BYTES else 4


def decode_cost(mode: str, size: tuple[int, int], color: str, fmt: str = "") -> int:
    """Upper bound of the bytes decoding an image of `mode` and `size` into `color` holds at once: the
    decoded image plus one derived full-size image (transposed, or converted), plus fixed overhead."""
    native = _storage(mode)
    derived = 1 if color == "L" or mode in _GREY else 4
    per_pixel = native + max(native, derived) + _FORMAT_EXTRA.get(fmt, 0)
    return size[0] * size[1] * per_pixel + _OVERHEAD


def open_header(data: bytes, limits: ImageLimits, color: str, resize: int) -> Header:
    """Check the encoded size, the format (allowlist) and the declared pixel count; decide the JPEG scale.
    Raises ImageError. Costs a header parse, however large the image claims to be."""
    if not data:
        raise ImageError(f"image is empty; expected the bytes of a {_describe_formats(limits.formats)} file")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data)} bytes; the limit is max_image_bytes={limits.max_bytes}")
    with _pil_errors(limits):
        img = Image.open(io.BytesIO(data), formats=limits.formats)
        width, height = img.size
        if width * height > limits.max_pixels:
            raise ImageError(
                f"image is {width}x{height} = {width * height} pixels; the limit is "
                f"max_image_pixels={limits.max_pixels}"
            )
        if width < 1 or height < 1:
            raise ImageError(f"image has no pixels ({width}x{height})")
        fmt = str(img.format)
        target = resize * DRAFT_MARGIN if limits.jpeg_draft else 0
        if fmt == "JPEG" and limits.decoder == "turbo" and img.mode in ("RGB", "L"):
            return _turbo_header(data, img, color, target)
        if fmt == "JPEG" and target and min(width, height) >= 2 * target:
            # draft() picks the largest DCT scale (1/2, 1/4, 1/8) whose output is at least the requested size.
            scale = min(width, height) / target
            img.draft(None, (max(1, int(width / scale)), max(1, int(height / scale))))  # type: ignore[arg-type]
        return Header(data, img, fmt, img.size, (width, height), decode_cost(img.mode, img.size, color, fmt))


def _turbo_header(data: bytes, img: Image.Image, color: str, target: int) -> Header:
    sj = simplejpeg_module()
    if sj is None:  # checked at start-up; a missing module here is a broken install
        raise RuntimeError("image_decoder=turbo needs simplejpeg (pip install simplejpeg)")
    minimum = target if target else 0
    height, width, _, _ = sj.decode_jpeg_header(data, min_height=minimum, min_width=minimum)
    # simplejpeg's array, which the image wraps, plus one derived full-size image (decode_cost).
    cost = decode_cost("L" if img.mode == "L" else "RGBX", (width, height), color)
    return Header(data, img, "JPEG", (width, height), img.size, cost, turbo_min=minimum or -1)


def load_upright(header: Header, color: str) -> Image.Image:
    """Decode, EXIF-transpose and convert to `color` (grey stays grey for an RGB model: `finish_color`).
    Raises ImageError for a corrupt or truncated file."""
    with _pil_errors(None):
        img = _decode(header, color)
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy when there is nothing to turn
        return reduce_depth(img, color)


def _decode(header: Header, color: str) -> Image.Image:
    if header.turbo_min:
        sj = simplejpeg_module()
        assert sj is not None
        minimum = max(0, header.turbo_min)
        grey = header.image.mode == "L"
        # RGBX: Pillow's own layout for RGB, so the image wraps simplejpeg's array without a copy.
        array = sj.decode_jpeg(
            header.data, colorspace="GRAY" if grey else "RGBX", min_height=minimum, min_width=minimum
        )
        height, width = array.shape[:2]
        mode = "L" if grey else "RGBX"
        decoded = Image.frombuffer(mode, (width, height), array, "raw", mode, 0, 1)
        decoded.info = header.image.info  # the EXIF orientation travels with the pixels
        return decoded
    img = header.image
    img.load()  # an opened file stands at its first frame (animations, multi-page files); n_frames is
    return img  # never asked, since counting GIF frames reads the whole file


def reduce_depth(img: Image.Image, color: str) -> Image.Image:
    """Every mode → "L" or `color`, never holding a full-size float copy. Grey sources (1, L, LA, 16-bit,
    float, a grey palette is not detected) become "L" even for an RGB model: `finish_color` replicates the
    channels after the resize, which gives identical pixels for a fraction of the memory and time."""
    if img.mode in _SIXTEEN_BIT:
        return _to_eight_bit(img)
    if img.mode == color or (color == "RGB" and img.mode in ("L", "RGBX")):
        return img  # RGBX (turbo's decode) becomes RGB after the resize, in finish_color
    if img.mode in ("1", "LA", "La") and color == "RGB":
        return img.convert("L")
    with warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be converted to RGBA images": the
        # colours are the same either way (RGBA → RGB drops alpha), and one step holds one copy less.
        warnings.simplefilter("ignore", UserWarning)
        if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa", "PA"):
            img = img.convert("RGB")
        return img.convert(color)


def finish_color(img: Image.Image, color: str) -> Image.Image:
    """A small image after the resize: grey → RGB for an RGB model."""
    return img.convert(color) if img.mode != color else img


def _to_eight_bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integers (scaled 0..65535 → 0..255, rounded, clipped) or floats (taken to be on the
    0..255 scale, clipped) → "L", a strip of rows at a time (PIL's own I;16 → L conversion clips at 255
    instead of scaling)."""
    width, height = img.size
    scale = 1.0 if img.mode == "F" else 255.0 / 65535.0
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        strip = np.asarray(img.crop((0, top, width, min(height, top + rows))))
        if img.mode in _TWO_BYTES:
            # A lookup of the rounded scaling: the same values as the float arithmetic, 10x faster.
            np.take(_SIXTEEN_TO_EIGHT, strip, out=out[top : top + strip.shape[0]])
        else:
            out[top : top + strip.shape[0]] = np.clip(np.rint(strip.astype(np.float64) * scale), 0, 255)
    return Image.fromarray(out, mode="L")


_SIXTEEN_TO_EIGHT: Final = np.rint(np.arange(65536, dtype=np.float64) * (255.0 / 65535.0)).astype(np.uint8)


@contextmanager
def _pil_errors(limits: ImageLimits | None) -> Iterator[None]:
    """Turn Pillow's failures into ImageError (one message per kind, never a command line or a path)."""
    with warnings.catch_warnings():
        # Our own limit is checked; PIL's bomb warning would only be noise in the log.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:  # PIL's own ceiling, checked inside open()
            # said as our own limit is, never with Pillow's ceiling, which is not what was configured
            counted = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = f"{counted.group(1)} pixels" if counted else f"over {PILLOW_MAX_PIXELS} pixels"
            if limits is not None and limits.max_pixels <= PILLOW_MAX_PIXELS:
                limit = f"max_image_pixels={limits.max_pixels}"
            else:
                limit = f"{PILLOW_MAX_PIXELS} pixels (Pillow's ceiling)"
            raise ImageError(f"image is {pixels}; the limit is {limit}") from None
        except UnidentifiedImageError:
            formats = limits.formats if limits is not None else DEFAULT_FORMATS
            raise ImageError(
                f"image bytes are not a decodable image of an accepted format; expected a "
                f"{_describe_formats(formats)} file"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
            # Truncated or corrupt files fail during load() with OSError/SyntaxError and a PIL message.
            raise ImageError(f"image is corrupt or truncated ({str(exc)[:200]})") from None
