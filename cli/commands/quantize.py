"""INT8 post-training quantization (static, QDQ) of an FP32 model from `resnet-serve export`.

Calibrates activation ranges on real training images (the digits training split for the digits model, or
--images DIR), quantizes weights per output channel, and writes a QDQ model in one of two flavours:

  trt  symmetric signed INT8 activations and weights, every zero point 0, float bias: what TensorRT's explicit
       quantization accepts (precision "int8-qdq-trt").
  ort  unsigned INT8 activations with zero points, signed INT8 weights (U8S8): what ONNX Runtime's CPU
       kernels run fastest (precision "int8-qdq-ort").

All other resnet_serve metadata is kept. Quantize the folded FP32 model (the default export).

examples:
  resnet-serve quantize artifacts/digits/model.onnx --out artifacts/digits/model.int8.onnx
  resnet-serve quantize resnet50.onnx --images calib/ --variant both --method percentile \\
      --out 'resnet50.int8-{variant}.onnx'          # resnet50.int8-trt.onnx and resnet50.int8-ort.onnx
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from resnet_serve.export import quantize
from resnet_serve.export.errors import ExportError
from resnet_serve.export.samples import calibration_batch


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", type=Path, help="FP32 ONNX model written by `resnet-serve export`")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="INT8 model to write; {variant} in its name becomes the variant (trt, ort): required "
        "with --variant both, e.g. --out 'model.int8-{variant}.onnx'",
    )
    parser.add_argument(
        "--variant",
        choices=[*quantize.VARIANTS, "both"],
        default="ort",
        help="trt: symmetric S8S8 for TensorRT; ort: U8S8, fastest on ONNX Runtime CPU",
    )
    parser.add_argument(
        "--method",
        choices=quantize.METHODS,
        default="minmax",
        help="activation range calibration: min/max, KL entropy, or percentile histogram "
        "(entropy clips ResNet activations too hard, see docs/export.md)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="folder of training images to calibrate on (default for the digits model: its training split)",
    )
    parser.add_argument("--num-calibration", type=int, default=256, help="calibration images to use")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.num_calibration < 1:
        raise ExportError("--num-calibration must be at least 1")
    paths = quantize.output_paths(args.out, args.variant)  # before any work: --out must fit --variant
    fp32, meta = quantize.load_fp32(args.onnx)
    data = calibration_batch(meta.labels, meta.preprocess, args.images, args.num_calibration)
    print(f"quantizing {meta.arch} to INT8 QDQ: {args.method} calibration on {len(data)} images")
    models = quantize.quantize(fp32, meta, data, tuple(paths), args.method)
    written = quantize.write_all(models, paths)
    for line in written:
        print(f"wrote {line}")
    print(f"done in {time.perf_counter() - start:.1f} s; check it with `resnet-serve verify`")
    return 0
