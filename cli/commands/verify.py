"""Parity report: the same held-out images through every stage, each compared with the PyTorch model.

Stages: PyTorch (the reference), folded PyTorch, and every model file given with --onnx (FP32, FP16 or INT8,
told apart by their resnet_serve.precision metadata) in ONNX Runtime, plus TensorRT engines given with
--engine where TensorRT is installed, and with --openvino each --onnx file in OpenVINO at that inference
precision (fp32, bf16; a precision this CPU cannot compute in is skipped and the table says so). Without
a checkpoint the reference is the first --onnx file in ONNX Runtime. Per stage it prints the max abs and
relative error of the logits (max |x − ref| / max |ref|), top-1 agreement with the reference and accuracy
(when the images have labels), and it exits 1 when a stage breaks its tolerance:
  fp32 and folded: relative error ≤ --fp32-tol;  fp16: relative error ≤ --fp16-tol;
  int8: top-1 agreement ≥ --int8-agreement and accuracy drop ≤ --int8-acc-drop points (when labelled);
  bf16 (OpenVINO): relative error ≤ --bf16-tol and top-1 agreement ≥ --bf16-agreement.

examples:
  resnet-serve verify --checkpoint artifacts/digits/model.pt --onnx artifacts/digits/model.onnx \\
      --onnx artifacts/digits/model.int8.onnx --json artifacts/digits/verify.json
  resnet-serve verify --onnx resnet50.onnx --openvino bf16 --images photos/
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from resnet_serve.cli.sources import add_source_arguments, source_from_args
from resnet_serve.export import verify
from resnet_serve.export.errors import ExportError
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.formats.parity import Tolerances
from resnet_serve.formats.repository import INFERENCE_PRECISIONS


def configure(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument(
        "--onnx",
        type=Path,
        action="append",
        default=[],
        help="an ONNX model from export/quantize (repeatable)",
    )
    parser.add_argument(
        "--engine",
        type=Path,
        action="append",
        default=[],
        help="a TensorRT engine from build-engine (repeatable; skipped without TensorRT)",
    )
    parser.add_argument(
        "--openvino",
        action="append",
        default=[],
        choices=INFERENCE_PRECISIONS,
        help="also run each --onnx file in OpenVINO at this inference precision (repeatable)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="image folder to compare on (default: digits held-out "
        "split for digits models, else scikit-learn's sample photos)",
    )
    parser.add_argument("--num-images", type=int, default=512, help="at most this many images")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--fp32-tol", type=float, default=Tolerances.fp32_rel, help="FP32 relative error")
    parser.add_argument("--fp16-tol", type=float, default=Tolerances.fp16_rel, help="FP16 relative error")
    parser.add_argument(
        "--int8-agreement",
        type=float,
        default=Tolerances.int8_agreement,
        help="INT8 minimum top-1 agreement with PyTorch (fraction)",
    )
    parser.add_argument(
        "--int8-acc-drop",
        type=float,
        default=Tolerances.int8_acc_drop,
        help="INT8 largest accuracy drop (fraction: 0.005 = 0.5 points)",
    )
    parser.add_argument("--bf16-tol", type=float, default=Tolerances.bf16_rel, help="BF16 relative error")
    parser.add_argument(
        "--bf16-agreement",
        type=float,
        default=Tolerances.bf16_agreement,
        help="BF16 minimum top-1 agreement with the reference (fraction)",
    )


def run(args: argparse.Namespace) -> int:
    """0 when every stage is within its tolerance; 1 with a FAILED summary (not an error) otherwise."""
    tol = Tolerances(
        args.fp32_tol,
        args.fp16_tol,
        args.int8_agreement,
        args.int8_acc_drop,
        args.bf16_tol,
        args.bf16_agreement,
    )
    if args.num_images < 1:
        raise ExportError("--num-images must be at least 1")
    if args.openvino and not args.onnx:
        raise ExportError("--openvino runs the --onnx files in OpenVINO: give at least one --onnx")
    has_source = args.checkpoint is not None or args.weights is not None
    source = source_from_args(args) if has_source else None
    results, n = verify.verify(
        source,
        list(args.onnx),
        list(args.engine),
        args.images,
        args.num_images,
        tol,
        tuple(dict.fromkeys(args.openvino)),
    )
    if args.json is not None:
        payload = {
            "images": n,
            "tolerances": asdict(tol),
            "stages": [asdict(r) for r in results],
            "ok": all(r.ok for r in results),
        }
        write_json_atomic(args.json, payload)
    verify.print_table(results, n)
    failed = [r.stage for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all stages within tolerance")
    return 0
