"""GPU JPEG decoding with NVIDIA nvImageCodec (`image_decoder = nvimgcodec`), behind the same preprocessing.

Thin on purpose: the header is still parsed by Pillow with the format allowlist and the limits
(formats/decode.py), the JPEGs of one request are decoded as one batch on the GPU (nvJPEG, EXIF orientation
applied), copied to host memory, and go through the same `Preprocessor.pixels` (resize + crop, normalise) as
every other image; other formats stay on the CPU path. It needs the `nvidia-nvimgcodec-cu12` (or `-cu13`,
matching the node's CUDA) package and a GPU, and the server refuses to start without them rather than fall
back silently.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from resnet_serve.formats.decode import Header, reduce_depth, simplejpeg_module
from resnet_serve.formats.errors import ImageError, UserError
from resnet_serve.formats.preprocess import Preprocessor

PACKAGE = "nvidia-nvimgcodec-cu12"
MODULE = "nvidia.nvimgcodec"

_codec: NvImageCodec | None = None


class DecoderUnavailable(UserError, ValueError):
    """The configured image decoder cannot run on this node; the message says what is missing. A ValueError,
    so a model that needs it fails to load (at start-up: the server does not start) with this message."""


class NvImageCodec:
    """One nvImageCodec decoder restricted to GPU backends; `decode` takes a batch of JPEG files."""

    def __init__(self, nv: Any) -> None:
        kinds = nv.BackendKind
        self._decoder = nv.Decoder(backends=[nv.Backend(kinds.GPU_ONLY), nv.Backend(kinds.HYBRID_CPU_GPU)])
        self._params = nv.DecodeParams(
            apply_exif_orientation=True, color_spec=nv.ColorSpec.RGB, allow_any_depth=False
        )

    def decode(self, files: Sequence[bytes]) -> list[np.ndarray | None]:
        """uint8 (H, W, 3) host arrays, None for a file the GPU could not decode."""
        images = self._decoder.decode(list(files), params=self._params)
        return [None if img is None else np.asarray(img.cpu()) for img in images]


def _probe_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def load() -> NvImageCodec:
    """Import nvImageCodec and decode one small JPEG on the GPU; DecoderUnavailable says what is missing."""
    try:
        nv = importlib.import_module(MODULE)
    except ImportError as exc:
        raise DecoderUnavailable(
            f"image_decoder=nvimgcodec needs NVIDIA nvImageCodec ({PACKAGE}, or -cu13 for CUDA 13) and a "
            f"CUDA GPU; importing {MODULE} failed: {exc}. Use image_decoder=turbo or pillow on this node"
        ) from None
    try:
        codec = NvImageCodec(nv)
        probe = codec.decode([_probe_jpeg()])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DecoderUnavailable(
            f"image_decoder=nvimgcodec could not decode on a GPU ({first}); is a CUDA GPU visible? "
            "Use image_decoder=turbo or pillow on this node"
        ) from None
    if len(probe) != 1 or probe[0] is None or probe[0].shape != (16, 16, 3):
        raise DecoderUnavailable(
            "image_decoder=nvimgcodec could not decode a test JPEG on a GPU; is a CUDA GPU visible? "
            "Use image_decoder=turbo or pillow on this node"
        )
    return codec


def require(decoder: str) -> None:
    """Called at server start: check that the configured decoder can run here (DecoderUnavailable), and
    load nvImageCodec once when it is the one."""
    global _codec
    if decoder == "turbo" and simplejpeg_module() is None:
        raise DecoderUnavailable(
            "image_decoder=turbo needs simplejpeg (pip install 'resnet-serve[turbo]'); "
            "image_decoder=pillow needs nothing more"
        )
    if decoder == "nvimgcodec" and _codec is None:
        _codec = load()


def codec() -> NvImageCodec:
    if _codec is None:  # require() runs at start-up; reaching here without it is a bug
        raise RuntimeError("nvImageCodec was not loaded at start-up")
    return _codec


def reset() -> None:
    """Forget the loaded decoder (tests)."""
    global _codec
    _codec = None


def finish_batch(pre: Preprocessor, headers: Sequence[Header]) -> list[np.ndarray | Exception]:
    """Decode inspected JPEGs as one GPU batch and run the rest of the pipeline on each (a pool thread)."""
    arrays = codec().decode([h.data for h in headers])
    rows: list[np.ndarray | Exception] = []
    for array in arrays:
        if array is None:
            rows.append(ImageError("image is corrupt or truncated (the GPU decoder could not decode it)"))
            continue
        rows.append(pre.pixels(reduce_depth(Image.fromarray(array), pre.spec.color)))
    return rows
