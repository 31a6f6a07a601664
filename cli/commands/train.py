"""``resnet-serve train``: the flags of the training recipe, turned into a `TrainConfig` and `TrainOptions`.

Under ``torchrun --nproc_per_node=N -m resnet_serve train ...`` every process parses the same flags and the
loop trains data-parallel.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# Set before torch loads (the loop explains why); torch is imported by the registry and the loop below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from resnet_serve.models import registry
from resnet_serve.training import data as datasets
from resnet_serve.training import loop
from resnet_serve.training.config import RUN_SETTINGS, TrainConfig, TrainOptions

DEFAULTS = TrainConfig()


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` flags to ``parser``."""
    parser.description = (
        "Train a ResNet and write a resnet-serve checkpoint (plus <out>.log.jsonl and <out>.curves.png). "
        "The defaults train resnet20 on scikit-learn's digits to >= 99% held-out accuracy in under "
        "3 minutes on 2 CPU cores. "
        " Data-parallel: torchrun --nproc_per_node=2 -m resnet_serve train ..."
    )
    a = parser.add_argument
    a("--arch", default=None, help=f"architecture, one of: {', '.join(registry.names())} (default: resnet20)")
    a(
        "--dataset",
        choices=datasets.DATASETS,
        default=None,
        help="digits: sklearn's 8x8 digits (built in); folder: --data DIR/<class>/*.jpg "
        "(or DIR/train + DIR/val); "
        "cifar10: --data DIR of CIFAR-10 python batches (default: digits)",
    )
    a("--data", type=Path, default=None, help="data set location for folder and cifar10")
    a(
        "--out",
        type=Path,
        default=Path("artifacts/digits/model.pt"),
        help="checkpoint path, rewritten after every epoch (default: artifacts/digits/model.pt)",
    )
    a("--epochs", type=int, default=None, help=f"training epochs (default: {DEFAULTS.epochs})")
    a(
        "--batch-size",
        type=int,
        default=None,
        help=f"global batch size, split across processes (default: {DEFAULTS.batch_size})",
    )
    a("--lr", type=float, default=None, help=f"peak learning rate (default: {DEFAULTS.lr})")
    a(
        "--momentum",
        type=float,
        default=None,
        help=f"SGD momentum (Nesterov) (default: {DEFAULTS.momentum})",
    )
    a("--weight-decay", type=float, default=None, help=f"weight decay (default: {DEFAULTS.weight_decay})")
    a("--opt", choices=("sgd", "adamw"), default=None, help="optimizer (default: sgd)")
    a(
        "--warmup-epochs",
        type=float,
        default=None,
        help=f"linear warm-up before the cosine decay (default: {DEFAULTS.warmup_epochs})",
    )
    a(
        "--label-smoothing",
        type=float,
        default=None,
        help=f"cross-entropy label smoothing (default: {DEFAULTS.label_smoothing})",
    )
    a(
        "--seed",
        type=int,
        default=None,
        help="seed for initialisation, shuffling and augmentation (default: 0)",
    )
    a(
        "--amp",
        choices=("auto", "off", "bf16", "fp16"),
        default=None,
        help="mixed precision: auto = fp16/bf16 autocast on CUDA, off on CPU; bf16 also works on CPU "
        "(default: auto)",
    )
    a("--color", choices=("RGB", "L"), default=None, help="folder data: colour mode (default: RGB)")
    a(
        "--image-size",
        type=int,
        default=None,
        help="folder data: crop size (images are resized to size*8/7 first) (default: 64)",
    )
    a(
        "--zero-init-residual",
        action="store_true",
        default=None,
        help="start each residual branch's last BatchNorm at 0 (helps large-batch ImageNet runs; on small "
        "data sets like digits it slows the first epochs down a lot)",
    )
    a(
        "--resume",
        nargs="?",
        const="",
        default=None,
        type=str,
        metavar="CKPT",
        help="continue an interrupted run from CKPT (default: --out) with the settings stored in it",
    )
    a("--workers", type=int, default=2, help="threads that decode folder images (default: 2)")
    a("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    a("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a crash


def run(args: argparse.Namespace) -> int:
    """0 on success, 3 when --stop-after-steps stopped the run, 130 on Ctrl-C (the last finished epoch is
    kept for ``--resume``); bad input raises a UserError that the CLI prints as one line (exit 2)."""
    given: dict[str, Any] = {k: getattr(args, k) for k in RUN_SETTINGS if getattr(args, k, None) is not None}
    if "data" in given:
        given["data"] = str(given["data"])
    options = TrainOptions(
        out=args.out,
        resume=Path(args.resume or args.out) if args.resume is not None else None,
        workers=args.workers,
        device=args.device,
        stop_after_steps=args.stop_after_steps,
    )
    try:
        if options.resume is not None:
            return loop.resume(options, given)
        return loop.train(TrainConfig(**given), options)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with `resnet-serve train --resume --out {args.out}`", file=sys.stderr)
        return 130
