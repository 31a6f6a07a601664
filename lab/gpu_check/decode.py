"""The image path on this node: encoded JPEG → normalised 224² row through the server's own preprocessing,
with nvImageCodec (GPU, one batch) when it loads here, turbo (simplejpeg) when it is installed, and Pillow.

Inputs: scikit-learn's china.jpg (a real 640×427 photo; a synthetic photo-like image when scikit-learn is
absent) and a 10 MP JPEG made by upscaling it (quality 90). Each path preprocesses a batch of copies on one
thread (the GPU path decodes the batch in one call); images/s is wall time, per path. Parity: the largest
difference from the Pillow path in grey levels. Reports "absent (...)" for a path that cannot run.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lab.gpu_check.settings import Settings, first_line, log
from resnet_serve.formats.decode import simplejpeg_module
from resnet_serve.formats.preprocess import IMAGENET, ImageLimits, Preprocessor, PreprocessSpec


def _photo() -> tuple[bytes, Image.Image]:
    try:
        from sklearn.datasets import images as sklearn_images
        from sklearn.datasets import load_sample_image

        path = Path(sklearn_images.__file__).parent / "china.jpg"
        return path.read_bytes(), Image.fromarray(load_sample_image("china.jpg"))
    except ImportError:
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:427, 0:640]
        base = np.stack([x * 255 // 640, y * 255 // 427, (x + y) * 255 // 1067], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        return buf.getvalue(), img


def _inputs() -> dict[str, bytes]:
    data, img = _photo()
    big = io.BytesIO()
    img.resize((3872, 2592), Image.Resampling.BICUBIC).save(big, "JPEG", quality=90)
    return {"jpeg_640x427": data, "jpeg_10mp": big.getvalue()}


def _grey_levels(a: np.ndarray, b: np.ndarray) -> float:
    std = np.asarray(IMAGENET["std"], dtype=np.float32).reshape(3, 1, 1)
    return float((np.abs(a - b) * std * 255).max())


def decode_check(cfg: Settings) -> dict[str, Any]:
    spec = PreprocessSpec.from_dict(IMAGENET)
    paths: dict[str, Any] = {"pillow": Preprocessor(spec, ImageLimits(decoder="pillow"))}
    result: dict[str, Any] = {"paths": {}, "lines": []}
    if simplejpeg_module() is not None:
        paths["turbo"] = Preprocessor(spec, ImageLimits(decoder="turbo"))
    else:
        result["paths"]["turbo"] = "absent (simplejpeg not installed)"
    try:
        from resnet_serve.server.decode import gpu as gpu_decode

        gpu_decode.require("nvimgcodec")  # loads it once, as the server's start-up does
        paths["nvimgcodec"] = Preprocessor(spec, ImageLimits(decoder="nvimgcodec"))
    except Exception as err:  # DecoderUnavailable, or anything a broken install raises
        result["paths"]["nvimgcodec"] = f"absent ({first_line(err)})"
    count = {"jpeg_640x427": 8 if cfg.dry_run else 64, "jpeg_10mp": 2 if cfg.dry_run else 16}
    for name, data in _inputs().items():
        batch = [data] * count[name]
        reference = paths["pillow"](data)
        for label, pre in paths.items():
            if label == "nvimgcodec":
                from resnet_serve.server.decode.gpu import finish_batch

                headers = [pre.inspect(d) for d in batch]
                finish_batch(pre, headers[:1])  # warm-up
                start = time.perf_counter()
                rows = finish_batch(pre, headers)
                seconds = time.perf_counter() - start
                row = rows[0]
            else:
                pre(data)
                start = time.perf_counter()
                rows = [pre(d) for d in batch]
                seconds = time.perf_counter() - start
                row = rows[0]
            if isinstance(row, Exception):
                result["paths"].setdefault(label, {})[name] = f"failed ({first_line(row)})"
                continue
            cell = {
                "images_per_s": len(batch) / seconds,
                "ms_per_image": seconds / len(batch) * 1e3,
                "max_grey_levels_vs_pillow": _grey_levels(row, reference),
            }
            result["paths"].setdefault(label, {})[name] = cell
            line = (
                f"decode {name} {label}: {cell['images_per_s']:.0f} img/s "
                f"({cell['ms_per_image']:.2f} ms), max {cell['max_grey_levels_vs_pillow']:.0f} grey levels "
                "from pillow"
            )
            result["lines"].append(line)
            log(line)
    return result
