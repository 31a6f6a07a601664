"""Turns what a caller has (bytes, a path, a PIL image, a NumPy array) into encoded image bytes.

The server decodes images itself, so bytes and files are sent untouched; in-memory pixels are encoded
losslessly as PNG so the server sees exactly the caller's pixels.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, Union

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

ImageLike: TypeAlias = Union[
    bytes, bytearray, memoryview, str, "os.PathLike[str]", "Image.Image", "np.ndarray"
]


def encode_image(image: ImageLike) -> bytes:
    """Encoded image bytes for `image`.

    bytes-like objects are sent as is; a str or path is read from disk; a PIL image is saved as PNG;
    a NumPy array (H×W, H×W×1, H×W×3 or H×W×4; uint8, bool, or float in [0, 1]) becomes a PNG.
    Raises TypeError or ValueError for anything else, and OSError when a file cannot be read.
    """
    if isinstance(image, bytes):
        return image
    if isinstance(image, bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    # Checked by module name first so that sending bytes never imports PIL or NumPy.
    cls_module = type(image).__module__
    if cls_module.startswith("PIL."):
        from PIL import Image

        if isinstance(image, Image.Image):
            return _png(image)
    if cls_module == "numpy":
        import numpy as np

        if isinstance(image, np.ndarray):
            return _png(_array_to_pil(image))
    raise TypeError(
        f"cannot send a {type(image).__name__} as an image: pass bytes, a path, a PIL image or a NumPy array"
    )


def _png(image: Image.Image) -> bytes:
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    # compress_level=1: PNG size hardly matters on a LAN; encoding time does.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _array_to_pil(array: np.ndarray) -> Image.Image:
    import numpy as np
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be H×W, H×W×1, H×W×3 or H×W×4, not {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0.0 or np.nanmax(array) > 1.0):
            raise ValueError("a float image array must hold values in [0, 1]")
        array = np.round(np.nan_to_num(array) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8, bool or float in [0, 1], not {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))
