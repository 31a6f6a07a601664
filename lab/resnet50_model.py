"""Make the ResNet-50 (224×224) the benchmarks serve, without downloading anything.

Weights are torchvision-format with a fixed seed (speed does not depend on their values); the file then goes
through the real `resnet-serve export --arch resnet50 --weights` path, folding and parity checks included.

    python -m lab.resnet50_model --out artifacts/resnet50/model.onnx
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from resnet_serve.models import registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.resnet50_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/resnet50/model.onnx"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = registry.build("resnet50", num_classes=1000)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "resnet50.pth"
        torch.save(model.state_dict(), weights)
        cmd = [sys.executable, "-m", "resnet_serve", "export", "--arch", "resnet50",
               "--weights", str(weights),
               "--num-classes", "1000", "--out", str(args.out)]  # fmt: skip
        return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
