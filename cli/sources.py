"""The flags that name a model to export or verify: --checkpoint, or --arch + --weights (+ preprocessing)."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet_serve.export import sources
from resnet_serve.export.errors import ExportError
from resnet_serve.formats.preprocess import IMAGENET, INTERPOLATIONS


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, or --arch + --weights (+ preprocessing overrides): shared by export and verify."""
    src = parser.add_argument_group("model source (give --checkpoint, or --arch with --weights)")
    src.add_argument("--checkpoint", type=Path, help="a resnet-serve checkpoint (from `resnet-serve train`)")
    src.add_argument(
        "--arch",
        help="architecture of --weights (e.g. resnet50, resnext50_32x4d); with "
        "--checkpoint, the architecture the checkpoint must hold",
    )
    src.add_argument("--weights", type=Path, help="a torchvision-format state_dict (.pth) for --arch")
    src.add_argument(
        "--num-classes", type=int, help="classes of --weights (default: read from its fc.weight)"
    )
    src.add_argument("--labels", type=Path, help="text file, one label per line (default: class_0..)")
    pre = parser.add_argument_group("preprocessing for --weights (defaults: torchvision's ImageNet recipe)")
    pre.add_argument("--color", choices=["RGB", "L"], default=IMAGENET["color"])
    pre.add_argument(
        "--resize",
        type=int,
        default=IMAGENET["resize"],
        help="shorter side after resizing, pixels",
    )
    pre.add_argument(
        "--crop",
        type=int,
        default=IMAGENET["crop"],
        help="centre crop size = model input size",
    )
    pre.add_argument(
        "--interpolation",
        default=IMAGENET["interpolation"],
        choices=list(INTERPOLATIONS),
    )
    pre.add_argument(
        "--mean",
        type=float,
        nargs="+",
        default=IMAGENET["mean"],
        help="per-channel mean on [0,1] pixels",
    )
    pre.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=IMAGENET["std"],
        help="per-channel std on [0,1] pixels",
    )


def source_from_args(args: argparse.Namespace) -> sources.Source:
    """The model the source flags name."""
    if args.checkpoint is not None and args.weights is not None:
        raise ExportError("give either --checkpoint or --weights (with --arch), not both")
    if args.checkpoint is not None:
        return sources.from_checkpoint(args.checkpoint, args.arch)
    if args.arch is None or args.weights is None:
        raise ExportError("need a model: --checkpoint FILE, or --arch NAME --weights FILE")
    preprocess = {
        "color": args.color,
        "resize": args.resize,
        "crop": args.crop,
        "interpolation": args.interpolation,
        "mean": list(args.mean),
        "std": list(args.std),
    }
    return sources.from_torchvision(args.arch, args.weights, args.num_classes, args.labels, preprocess)
