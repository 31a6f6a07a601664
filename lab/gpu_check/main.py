"""The check from start to end: the command line, then each model through each backend, saving the report
after every row so a killed run keeps what it measured."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lab.gpu_check as gpu_check
from lab.gpu_check.backends import candidates
from lab.gpu_check.decode import decode_check
from lab.gpu_check.digits import digits_model, prepare_bundle
from lab.gpu_check.environment import environment, tensorrt_usable
from lab.gpu_check.model import Model, export_onnx, set_reference
from lab.gpu_check.report import render, report_of, save
from lab.gpu_check.resnet50 import resnet50_model
from lab.gpu_check.row import Row
from lab.gpu_check.served import serve_row
from lab.gpu_check.settings import Settings, Skip, first_line, log
from lab.gpu_check.throughput import run_candidate

BATCHES = (1, 8, 32, 128)


def check(cfg: Settings) -> dict[str, Any]:
    work = cfg.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    log("environment: " + json.dumps(env))
    on_gpu = bool(env.get("cuda_available"))
    if not on_gpu and not cfg.dry_run:
        log("no CUDA GPU visible to PyTorch: only ONNX Runtime GPU providers and TensorRT can run")
    rows: list[Row] = []
    skipped: list[str] = []
    makers: list[tuple[str, Callable[[], Model]]] = [("digits", lambda: digits_model(cfg, work, on_gpu))]
    if cfg.resnet50:
        makers.append(("resnet50", lambda: resnet50_model(work, on_gpu)))
    else:
        skipped.append("resnet50: skipped (" + ("dry run" if cfg.dry_run else "--no-resnet50") + ")")
    for name, make in makers:
        try:
            cfg.require_time(60, name)
            log(f"{name}: preparing the model")
            model = make()
            try:
                export_onnx(model, work, want_int8=tensorrt_usable(env))
            except Exception as err:  # ExportError (no onnxscript, say) or a failed FP16/INT8 conversion
                model.notes.append(f"ONNX export failed: {first_line(err)}")
                skipped.append(f"{name}: ONNX export failed: {first_line(err)}")
            set_reference(model)
        except Skip as err:
            skipped.append(str(err))
            continue
        found, why_not = candidates(model, env, work, cfg.dry_run)
        skipped += [f"{name}: {w}" for w in why_not]
        for cand in found:
            row, backend = run_candidate(cfg, model, cand)
            row.notes += model.notes
            if backend is not None:
                with contextlib.suppress(Exception):
                    backend.close()
            if backend is not None and cand.server_args is not None and (name == "resnet50" or cfg.dry_run):
                serve_row(cfg, model, cand, row, work)
            rows.append(row)
            save(cfg.out, report_of(cfg, env, rows, skipped))  # a killed run still leaves its results
    report = report_of(cfg, env, rows, skipped)
    try:  # the image path: nvImageCodec when it loads here, else turbo, against Pillow
        cfg.require_time(20, "image decode path")
        report["decode"] = decode_check(cfg)
    except Skip as err:
        report["skipped"].append(str(err))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.gpu_check",
        description=gpu_check.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/gpu_check"),
        help="folder for gpu_check.json and the models it builds (default: artifacts/gpu_check)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU run of the whole flow: 2-epoch digits, CPU stand-in backends, short timings",
    )
    parser.add_argument(
        "--prepare",
        type=Path,
        metavar="DIR",
        help="only train the digits model and save its data to DIR (for nodes without sklearn)",
    )
    parser.add_argument(
        "--digits", type=Path, metavar="DIR", help="a --prepare bundle to use instead of training"
    )
    parser.add_argument("--epochs", type=int, default=15, help="digits training epochs for --prepare (15)")
    parser.add_argument(
        "--no-resnet50", action="store_true", help="skip ResNet-50 (default: on, off in dry runs)"
    )
    parser.add_argument(
        "--resnet50", action="store_true", help="include ResNet-50 in a dry run (slow on a CPU)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="stop starting new steps after this (450)"
    )
    args = parser.parse_args(argv)
    if args.prepare is not None:
        try:
            prepare_bundle(args.prepare, epochs=args.epochs)
        except Skip as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    dry = bool(args.dry_run)
    cfg = Settings(
        out=args.out,
        dry_run=dry,
        budget_s=args.budget_s,
        seconds_per_point=0.3 if dry else 2.0,
        batches=(1, 8, 32) if dry else BATCHES,
        served_seconds=2.0 if dry else 8.0,
        served_concurrency=(1, 8) if dry else (1, 64),
        digits_bundle=args.digits,
        resnet50=not args.no_resnet50 and (args.resnet50 or not dry),
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = check(cfg)
    path = save(args.out, report)
    print(render(report, cfg.batches, cfg.served_concurrency))
    print(f"wrote {path}")
    failed = [r for r in report["rows"] if r["parity"] == "FAIL"]
    return 1 if failed else 0
