"""`resnet-serve build-engine`: compile an ONNX model to a serialized TensorRT engine, with a sidecar JSON.

Precision follows TensorRT's strongly typed model (the only one TensorRT 11 has): the network runs in the
types the ONNX graph declares. FP32 is the exported model as is; FP16 is an FP16 ONNX (`export.fp16`, made
on the fly from an FP32 model when asked); INT8 is our symmetric QDQ ONNX (explicit quantization). Builder
precision flags (weak typing) are used only on TensorRT 10 when asked for, or when the installed TensorRT
has no strongly typed networks; implicit INT8 calibration is never used (TensorRT 11 removed it).

An engine only runs on the TensorRT version and GPU architecture it was built with. The sidecar
(`ENGINE.json`) records both, so the server refuses a mismatched engine with a "rebuild" message before
TensorRT ever sees it. Everything except `build()` is pure Python and tested without TensorRT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet_serve.export import engine
from resnet_serve.formats.sidecar import ENGINE_PRECISIONS, sidecar_path
from resnet_serve.runtime.tensorrt import require_tensorrt


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compile an ONNX model from `resnet-serve export` (or `quantize`) into a TensorRT engine for this "
        "GPU, and write ENGINE.json beside it (TensorRT version, GPU, profile, precision, source hash). The "
        "engine runs only with the same TensorRT version on the same GPU architecture; the server checks "
        "the sidecar and asks for a rebuild otherwise."
    )
    parser.epilog = (
        "precision: the engine runs in the types of the ONNX graph (strongly typed). --precision fp16 "
        "converts an FP32 ONNX to FP16 first (float32 I/O kept); int8 needs the QDQ ONNX from "
        "`resnet-serve quantize`. example:\n"
        "  resnet-serve build-engine model.onnx --out model.plan --precision fp16 --max-batch 128"
    )
    parser.add_argument("onnx", type=Path, help="ONNX model (FP32, FP16 or INT8 QDQ from our export)")
    parser.add_argument("--out", type=Path, required=True, help="engine file to write (e.g. model.plan)")
    parser.add_argument(
        "--precision",
        choices=ENGINE_PRECISIONS,
        default="auto",
        help="auto: the ONNX's own precision (default); fp16 converts an FP32 ONNX first",
    )
    parser.add_argument("--min-batch", type=int, default=1, help="smallest batch the engine accepts (1)")
    parser.add_argument("--opt-batch", type=int, default=32, help="batch size TensorRT tunes for (32)")
    parser.add_argument(
        "--max-batch", type=int, default=128, help="largest batch (128); the server splits larger batches"
    )
    parser.add_argument(
        "--workspace-mib", type=int, default=4096, help="builder workspace limit in MiB (4096)"
    )
    parser.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="persistent timing cache file: read if present, updated after the build; "
        "makes rebuilds on the same GPU much faster",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 math in FP32 engines (faster on Ampere+, ~1e-3 relative error)",
    )
    parser.add_argument(
        "--weak-typing",
        action="store_true",
        help="TensorRT 10 only: use the FP16/INT8 builder flags instead of a typed ONNX",
    )
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (0)")


def run(args: argparse.Namespace) -> int:
    if args.workspace_mib < 1:
        raise engine.EngineError(f"--workspace-mib must be positive, got {args.workspace_mib}")
    if not args.onnx.is_file():
        raise engine.EngineError(f"no such ONNX file: {args.onnx}")
    profile = engine.BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
    require_tensorrt()
    sidecar = engine.build(
        engine.BuildRequest(
            onnx_path=args.onnx,
            engine_path=args.out,
            profile=profile,
            precision=args.precision,
            workspace_mib=args.workspace_mib,
            timing_cache=args.timing_cache,
            weak_typing=args.weak_typing,
            tf32=args.tf32,
            device=args.device,
        )
    )
    print(
        f"wrote {args.out} ({sidecar.precision}, TensorRT {sidecar.tensorrt_version}, {sidecar.gpu_name} "
        f"sm_{sidecar.compute_capability.replace('.', '')}, batch {profile.min}..{profile.max}, "
        f"built in {sidecar.build_seconds:.0f} s) and {sidecar_path(args.out).name}"
    )
    return 0
