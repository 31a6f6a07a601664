"""Write the real-photo set that BF16 and INT8 parity are checked on (docs/export.md) into a folder.

No download: scikit-image ships these photos in `skimage/data` (the dev extra installs it) and scikit-learn
ships china.jpg and flower.jpg. 20 images of varied content (people, animals, objects, scenes, textures,
microscopy, astronomy); use the folder as `--images` for `resnet-serve verify` and `resnet-serve quantize`.

    python -m lab.photos --out artifacts/photos
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SKIMAGE = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "retina.jpg", "brick.png", "grass.png", "gravel.png", "camera.png", "coins.png",
    "moon.png", "horse.png", "color.png", "ihc.png", "cell.png",
)  # fmt: skip
SKLEARN = ("china.jpg", "flower.jpg")


def write_photos(out: Path) -> list[Path]:
    """Copy the set into `out` (created); returns the files written."""
    import skimage.data
    import sklearn.datasets

    out.mkdir(parents=True, exist_ok=True)
    sources = [Path(skimage.data.__file__).parent / name for name in SKIMAGE]
    sources += [Path(sklearn.datasets.__file__).parent / "images" / name for name in SKLEARN]
    written = []
    for source in sources:
        target = out / source.name
        shutil.copyfile(source, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.photos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/photos"))
    args = parser.parse_args(argv)
    written = write_photos(args.out)
    print(f"wrote {len(written)} photos to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
