"""Fold BatchNorm and export a resnet-serve checkpoint, or torchvision-format weights, to one ONNX file.

The file is self-contained (weights inside, no external data), has input `input` (batch, C, H, W) float32 and
output `logits` (batch, classes) with a dynamic batch dimension, and carries the resnet_serve.* metadata the
server needs (labels, preprocessing, architecture, source hash, tool versions). Before it is written it must
pass onnx's full checker, contain no BatchNormalization node, and match PyTorch on real images in ONNX
Runtime (relative error ≤ --tolerance, at batch 1 and at the full batch).

examples:
  resnet-serve export --checkpoint artifacts/digits/model.pt --out artifacts/digits/model.onnx
  resnet-serve export --arch resnet50 --weights resnet50-11ad3fa6.pth --out resnet50.onnx \\
      --labels imagenet_classes.txt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from resnet_serve.cli.sources import add_source_arguments, source_from_args
from resnet_serve.export import onnx_export
from resnet_serve.export.errors import ExportError
from resnet_serve.export.samples import evaluation_batch
from resnet_serve.formats.files import write_bytes_atomic


def configure(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write (atomically)")
    parser.add_argument(
        "--no-fold",
        dest="fold",
        action="store_false",
        help="keep BatchNormalization nodes (for debugging; serving wants folded models)",
    )
    parser.add_argument(
        "--opset", type=int, default=onnx_export.OPSET, help="ONNX opset (why 18: docs/export.md)"
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="folder of images to compare on (default: digits held-out split for digits "
        "models, else scikit-learn's sample photos)",
    )
    parser.add_argument("--num-images", type=int, default=16, help="how many images to compare on")
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16: convert the checked FP32 graph to FP16 (float32 I/O kept) with "
        f"export.fp16, compared to PyTorch at relative error ≤ {onnx_export.FP16_TOLERANCE:.0e}",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=onnx_export.DEFAULT_TOLERANCE,
        help="largest allowed relative error of ONNX Runtime vs PyTorch logits",
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.num_images < 1:
        raise ExportError("--num-images must be at least 1")
    source = source_from_args(args)
    inputs, _ = evaluation_batch(source.meta.preprocess, source.dataset, args.images, args.num_images)
    print(
        f"exporting {source.meta.arch} ({len(source.meta.labels)} classes, input "
        f"{tuple(inputs.shape[1:])}, opset {args.opset})"
    )
    proto, rel = onnx_export.export_source(source, inputs, args.fold, args.opset, args.tolerance)
    if args.precision == "fp16":
        proto, rel = onnx_export.to_fp16_checked(proto, source, inputs)
    data = proto.SerializeToString()
    write_bytes_atomic(args.out, data)
    print(
        f"wrote {args.out} ({len(data) / 1e6:.1f} MB, {len(proto.graph.node)} nodes, "
        f"precision {args.precision}, rel error {rel:.1e}) in {time.perf_counter() - start:.1f} s"
    )
    return 0
