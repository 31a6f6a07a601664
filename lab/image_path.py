"""Image path benchmark: encoded bytes → normalised 224² ImageNet tensor, images per second per core.

Inputs: a real 640×427 JPEG (scikit-learn's china.jpg, its own bytes), a 10 MP JPEG (china.jpg upscaled to
3872×2592, quality 90) and a 640×427 PNG. Pipelines, timed in the same run on one thread (process CPU time,
best of the repeats):

* `plain`: the plain Pillow pipeline (open, RGB, resize shorter side 256 bilinear, crop 224, normalise);
* `ours-pillow`: `formats/preprocess.py`'s Preprocessor with image_decoder=pillow (the server's path);
* `ours-turbo`: the same with image_decoder=turbo (simplejpeg for JPEGs).

Then the JPEG decode step alone at the scale our path picks (jpeg_draft: DCT scaling while the decoded
shorter side stays ≥ 4 × 256): Pillow's draft, simplejpeg, and PyTurboJPEG when it imports (it needs the
system's libturbojpeg). The accuracy effect of each path against `plain`: pixel differences in grey levels,
and top-1 agreement of a seeded, randomly initialised ResNet-18 over variants of scikit-learn's two photos
and, when it is installed, scikit-image's (no ImageNet weights can be downloaded here, so this is a
sensitivity proxy, not an accuracy). Prints a table and writes JSON. A script, not a test: the numbers
depend on the machine and its load.

    python -m lab.image_path --out artifacts/bench/image_path.json
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from resnet_serve.formats.decode import DRAFT_MARGIN, simplejpeg_module
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.formats.preprocess import IMAGENET, ImageLimits, Preprocessor, PreprocessSpec

Pipeline = Callable[[bytes], NDArray[np.float32]]
_MEAN = np.asarray(IMAGENET["mean"], dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET["std"], dtype=np.float32).reshape(3, 1, 1)


def plain(data: bytes) -> NDArray[np.float32]:
    """The plain Pillow pipeline the targets are ratios to."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    size = (256, round(h * 256 / w)) if w <= h else (round(w * 256 / h), 256)
    img = img.resize(size, Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = round((w - 224) / 2), round((h - 224) / 2)
    pixels = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.uint8)
    out: NDArray[np.float32] = (pixels.transpose(2, 0, 1).astype(np.float32) / 255.0 - _MEAN) / _STD
    return out


def inputs() -> dict[str, bytes]:
    from sklearn.datasets import images as sklearn_images
    from sklearn.datasets import load_sample_image

    china_path = Path(sklearn_images.__file__).parent / "china.jpg"
    china = Image.fromarray(load_sample_image("china.jpg"))
    big, png = io.BytesIO(), io.BytesIO()
    china.resize((3872, 2592), Image.Resampling.BICUBIC).save(big, "JPEG", quality=90)
    china.save(png, "PNG")
    return {
        "jpeg_640x427": china_path.read_bytes(),
        "jpeg_10mp": big.getvalue(),
        "png_640x427": png.getvalue(),
    }


def cpu_seconds(fn: Callable[[], object], budget_s: float, repeats: int = 5) -> float:
    """Best per-call process CPU time over `repeats` rounds sized to ~budget_s / repeats each."""
    fn()
    start = time.process_time()
    fn()
    once = max(time.process_time() - start, 1e-5)
    n = max(1, int(budget_s / repeats / once))
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - start) / n)
    return best


def pipelines() -> dict[str, Pipeline]:
    spec = PreprocessSpec.from_dict(IMAGENET)
    out: dict[str, Pipeline] = {
        "plain": plain,
        "ours-pillow": Preprocessor(spec, ImageLimits(decoder="pillow")),
    }
    if simplejpeg_module() is not None:
        out["ours-turbo"] = Preprocessor(spec, ImageLimits(decoder="turbo"))
    return out


def decoders(data: bytes) -> dict[str, Callable[[], object]]:
    """The JPEG decode step alone, each at the DCT scale our path would pick."""
    target = 256 * DRAFT_MARGIN
    img = Image.open(io.BytesIO(data))
    w, h = img.size

    def pillow_draft() -> object:
        im = Image.open(io.BytesIO(data))
        if min(w, h) >= 2 * target:
            scale = min(w, h) / target
            im.draft("RGB", (int(w / scale), int(h / scale)))
        im.load()
        return im

    out: dict[str, Callable[[], object]] = {"pillow-draft": pillow_draft}
    sj = simplejpeg_module()
    if sj is not None:
        out["simplejpeg"] = lambda: sj.decode_jpeg(
            data, colorspace="RGB", min_height=target, min_width=target
        )
    try:
        import turbojpeg

        tj = turbojpeg.TurboJPEG()
        factors = sorted((f for f in tj.scaling_factors if f[0] <= f[1]), key=lambda f: f[0] / f[1])
        factor = next((f for f in factors if min(w, h) * f[0] / f[1] >= target), (1, 1))
        out["pyturbojpeg"] = lambda: tj.decode(data, scaling_factor=factor, pixel_format=turbojpeg.TJPF_RGB)
    except Exception as err:  # not installed, or no (recent enough) libturbojpeg on the system
        print(f"pyturbojpeg: not measured ({str(err).splitlines()[0][:120]})")
    return out


def _skimage_photos() -> list[Image.Image]:
    """scikit-image's bundled RGB photos, when it is installed (it ships them; nothing is downloaded)."""
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        try:
            out.append(Image.fromarray(getattr(data, name)()).convert("RGB"))
        except Exception:  # an image this version would have to download
            continue
    return out


def agreement(paths: dict[str, Pipeline]) -> dict[str, Any]:
    """Top-1 agreement with `plain` of a seeded random ResNet-18 over photo variants (4 sizes × 3 crops of
    sklearn's 2 photos, and of scikit-image's when installed), plus the pixel differences in grey levels."""
    import torch
    from sklearn.datasets import load_sample_image

    from resnet_serve.models import registry

    torch.manual_seed(0)
    model = registry.build("resnet18", num_classes=1000).eval()
    files: list[bytes] = []
    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    photos += _skimage_photos()
    for photo in photos:
        w, h = photo.size
        for crop in ((0, 0, w, h), (w // 10, h // 20, w * 9 // 10, h), (w // 3, 0, w * 4 // 5, h * 15 // 16)):
            part = photo.crop(crop)
            for longer in (500, 1200, 2400, 3872):
                scale = longer / max(part.size)
                buf = io.BytesIO()
                part.resize(
                    (round(part.width * scale), round(part.height * scale)), Image.Resampling.BICUBIC
                ).save(buf, "JPEG", quality=90)
                files.append(buf.getvalue())
    rows = {name: np.stack([fn(data) for data in files]) for name, fn in paths.items()}
    with torch.no_grad():
        top1 = {name: model(torch.from_numpy(x)).argmax(1).numpy() for name, x in rows.items()}
    out: dict[str, Any] = {"images": len(files), "model": "resnet18, seed 0, random init (no weights here)"}
    for name, x in rows.items():
        grey = np.abs(x - rows["plain"]) * _STD * 255
        out[name] = {
            "top1_agreement": float((top1[name] == top1["plain"]).mean()),
            "mean_grey_levels": float(grey.mean()),
            "max_grey_levels": float(grey.max()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.image_path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/image_path.json"))
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measurement (2)")
    parser.add_argument("--no-agreement", action="store_true", help="skip the ResNet-18 agreement check")
    args = parser.parse_args(argv)
    paths = pipelines()
    report: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_1m": os.getloadavg()[0], "python": platform.python_version()},
        "pipelines": {},
        "decoders": {},
    }  # fmt: skip
    print(f"{'input':14s} {'pipeline':12s} {'ms/image':>9s} {'img/s/core':>11s} {'vs plain':>9s}")
    for name, data in inputs().items():
        base = None
        for label, fn in paths.items():
            seconds = cpu_seconds(lambda fn=fn, data=data: fn(data), args.seconds)  # type: ignore[misc]
            base = base or seconds
            report["pipelines"].setdefault(name, {})[label] = {
                "ms": seconds * 1e3,
                "images_per_s_per_core": 1 / seconds,
                "ratio_to_plain": seconds / base,
            }
            print(f"{name:14s} {label:12s} {seconds * 1e3:9.2f} {1 / seconds:11.1f} {seconds / base:8.2f}x")
        if name.startswith("jpeg"):
            for label, step in decoders(data).items():
                seconds = cpu_seconds(step, args.seconds / 2)
                report["decoders"].setdefault(name, {})[label] = {"ms": seconds * 1e3}
                print(f"{name:14s} decode:{label:13s} {seconds * 1e3:7.2f} ms")
    if not args.no_agreement:
        report["agreement"] = agreement(paths)
        for label, row in report["agreement"].items():
            if isinstance(row, dict):
                print(f"agreement {label:12s} top-1 {row['top1_agreement']:.3f}  grey levels mean "
                      f"{row['mean_grey_levels']:.3f} max {row['max_grey_levels']:.0f}")  # fmt: skip
    report["machine"]["load_1m_end"] = os.getloadavg()[0]
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
