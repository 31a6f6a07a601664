"""CPU backend benchmark: PyTorch eager (unfolded, folded) vs ONNX Runtime FP32 and INT8 (both QDQ variants).

Models: ResNet-50 at 224×224 (fixture weight fill: speed does not depend on training) and the digits resnet20
(a checkpoint if given, else random init). Batch sizes 1, 8, 32. First it tunes ONNX Runtime's session options
one at a time on ResNet-50 (FP32 and INT8) and records what each gave; the table then uses the best settings.
Prints a table and writes JSON. A script, not a test: numbers depend on the machine and its load.

    python -m lab.cpu_backends --out artifacts/bench/cpu_backends.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from resnet_serve.export.onnx_export import to_onnx
from resnet_serve.export.quantize import quantize
from resnet_serve.export.samples import digits_training, preprocess_images, sample_photos
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.formats.metadata import ModelMetadata, tool_versions
from resnet_serve.formats.preprocess import IMAGENET
from resnet_serve.models import registry
from resnet_serve.models.fill import deterministic_fill
from resnet_serve.models.fold import fold_batchnorm

Infer = Callable[[NDArray[np.float32]], Any]


@dataclass
class Cell:
    model: str
    backend: str
    batch: int
    throughput_img_s: float
    latency_ms_mean: float
    latency_ms_p50: float
    latency_ms_p95: float
    iterations: int


def measure(
    fn: Infer, x: NDArray[np.float32], budget_s: float, min_iters: int = 3
) -> tuple[list[float], int]:
    """Per-call latencies (s) after two warm-up calls, until the budget or min_iters, whichever is later."""
    fn(x)
    fn(x)  # oneDNN and ORT both finish lazy per-shape initialisation on the first calls
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
        if len(times) >= 200:
            break
    return times, len(times)


def cell(model: str, backend: str, fn: Infer, x: NDArray[np.float32], budget_s: float) -> Cell:
    times, n = measure(fn, x, budget_s)
    mean = statistics.fmean(times)
    q = np.percentile(times, [50, 95])
    return Cell(model, backend, len(x), len(x) / mean, mean * 1e3, float(q[0]) * 1e3, float(q[1]) * 1e3, n)


def paired_ratio(fast: Infer, slow: Infer, x: NDArray[np.float32], rounds: int) -> dict[str, float]:
    """Throughput ratio fast/slow from alternating calls: on a shared machine, load changes between two
    separately timed cells can exceed the effect; alternating exposes both to the same load."""
    fast(x), slow(x)
    t_fast: list[float] = []
    t_slow: list[float] = []
    for _ in range(rounds):
        for fn, times in ((fast, t_fast), (slow, t_slow)):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return {
        "ratio_of_medians": statistics.median(t_slow) / statistics.median(t_fast),
        "ratio_of_totals": sum(t_slow) / sum(t_fast),
        "rounds": rounds,
        "batch": len(x),
    }


# --- ONNX Runtime session options --------------------------------------------------------------------------

BASELINE: dict[str, Any] = {
    "intra_op_num_threads": 2,
    "graph_optimization_level": "all",
    "execution_mode": "sequential",
    "enable_cpu_mem_arena": True,
    "allow_spinning": True,
}
VARIATIONS: list[tuple[str, Any]] = [
    ("intra_op_num_threads", 1),
    ("intra_op_num_threads", 0),  # 0 = ORT's default: one thread per physical core
    ("graph_optimization_level", "basic"),
    ("graph_optimization_level", "extended"),
    ("execution_mode", "parallel"),
    ("enable_cpu_mem_arena", False),
    ("allow_spinning", False),
]
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(model: bytes, opts: dict[str, Any]) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(opts["intra_op_num_threads"])
    so.graph_optimization_level = _LEVELS[opts["graph_optimization_level"]]
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if opts["execution_mode"] == "parallel"
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if opts["execution_mode"] == "parallel":
        so.inter_op_num_threads = 2
    so.enable_cpu_mem_arena = bool(opts["enable_cpu_mem_arena"])
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts["allow_spinning"] else "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_fn(sess: ort.InferenceSession) -> Infer:
    return lambda x: sess.run(["logits"], {"input": x})


def tune(
    models: dict[str, bytes], x: NDArray[np.float32], budget_s: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One option changed at a time from BASELINE; per option, keep the value with the largest gain that beats
    the baseline on every model (the options are then combined untested: each is measured alone)."""
    rows: list[dict[str, Any]] = []
    base = {
        name: cell("resnet50", name, ort_fn(session(m, BASELINE)), x, budget_s).throughput_img_s
        for name, m in models.items()
    }
    rows.append({"option": "baseline", "value": json.dumps(BASELINE), **base})
    best = dict(BASELINE)
    gain = dict.fromkeys(BASELINE, 1.03)  # 3 %: below that it is noise on a shared machine
    for key, value in tqdm(VARIATIONS, desc="tuning ORT options", leave=False):
        opts = {**BASELINE, key: value}
        got = {
            name: cell("resnet50", name, ort_fn(session(m, opts)), x, budget_s).throughput_img_s
            for name, m in models.items()
        }
        rows.append({"option": key, "value": value, **got})
        worst = min(got[n] / base[n] for n in models)
        if worst > gain[key]:
            best[key], gain[key] = value, worst
    return best, rows


def tune_torch_threads(
    model: nn.Module, x: NDArray[np.float32], budget_s: float
) -> tuple[int, dict[str, float]]:
    """PyTorch's OpenMP pool: with 2 threads on 2 busy cores every op waits at a barrier for a descheduled
    thread, which can cost 100x; one thread avoids that. Measure both, keep the faster."""
    got = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        got[str(threads)] = cell(
            "resnet50", "pytorch folded", lambda b: _torch(model, b), x, budget_s
        ).throughput_img_s
    best = int(max(got, key=lambda k: got[k]))
    torch.set_num_threads(best)
    return best, got


# --- models ------------------------------------------------------------------------------------------------


def _meta(arch: str, labels: int, pre: dict[str, Any]) -> ModelMetadata:
    return ModelMetadata(arch, [f"class_{i}" for i in range(labels)], pre, "0" * 64, tool_versions())


def prepare(name: str, model: nn.Module, meta: ModelMetadata, calib: NDArray[np.float32]) -> dict[str, Any]:
    model.eval()
    folded = fold_batchnorm(model)
    fp32 = to_onnx(folded, torch.from_numpy(calib[:2]))
    int8 = quantize(fp32, meta, calib, ("trt", "ort"), "minmax")
    return {
        "name": name,
        "eager": model,
        "folded": folded,
        "fp32": fp32.SerializeToString(),
        "int8-trt": int8["trt"].SerializeToString(),
        "int8-ort": int8["ort"].SerializeToString(),
    }


def resnet50(calib_images: int) -> tuple[dict[str, Any], NDArray[np.float32]]:
    model = registry.build("resnet50", num_classes=1000)
    deterministic_fill(model)
    calib = preprocess_images(sample_photos(calib_images), IMAGENET)
    return prepare("resnet50", model, _meta("resnet50", 1000, IMAGENET), calib), calib


def digits(checkpoint: Path | None) -> tuple[dict[str, Any], NDArray[np.float32]]:
    if checkpoint is not None:
        from resnet_serve.models.checkpoint import load_model

        model, meta = load_model(checkpoint)
        pre = meta["preprocess"]
    else:
        from resnet_serve.training.data import digits_preprocess

        model, pre = registry.build("resnet20", num_classes=10, in_chans=1), digits_preprocess()
    calib = digits_training(pre, 128)
    return prepare("digits-resnet20", model, _meta("resnet20", 10, pre), calib), calib


def run_table(
    m: dict[str, Any], pool: NDArray[np.float32], batches: list[int], opts: dict[str, Any], budget_s: float
) -> list[Cell]:
    cells: list[Cell] = []
    sessions = {k: session(m[k], opts) for k in ("fp32", "int8-trt", "int8-ort")}
    backends: list[tuple[str, Infer]] = [
        ("pytorch eager", lambda x: _torch(m["eager"], x)),
        ("pytorch folded", lambda x: _torch(m["folded"], x)),
        ("ort fp32", ort_fn(sessions["fp32"])),
        ("ort int8-qdq-trt", ort_fn(sessions["int8-trt"])),
        ("ort int8-qdq-ort", ort_fn(sessions["int8-ort"])),
    ]
    for b in batches:
        x = np.ascontiguousarray(np.resize(pool, (b, *pool.shape[1:])))
        for label, fn in tqdm(backends, desc=f"{m['name']} batch {b}", leave=False):
            cells.append(cell(m["name"], label, fn, x, budget_s))
    return cells


def _torch(model: nn.Module, x: NDArray[np.float32]) -> Any:
    with torch.inference_mode():
        return model(torch.from_numpy(x))


def print_table(cells: list[Cell]) -> None:
    print(f"{'model':<17}{'backend':<19}{'batch':>5}{'img/s':>10}{'mean ms':>10}{'p50 ms':>9}{'p95 ms':>9}")
    for c in cells:
        print(
            f"{c.model:<17}{c.backend:<19}{c.batch:>5}{c.throughput_img_s:>10.1f}{c.latency_ms_mean:>10.2f}"
            f"{c.latency_ms_p50:>9.2f}{c.latency_ms_p95:>9.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.cpu_backends",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/cpu_backends.json"))
    parser.add_argument("--digits-checkpoint", type=Path, help="trained digits checkpoint (default: random)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds measured per table cell")
    parser.add_argument("--tune-budget", type=float, default=1.5, help="seconds per model per tuning option")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--no-tune", action="store_true", help="use the baseline ORT options")
    parser.add_argument(
        "--paired-rounds", type=int, default=10, help="alternating FP32/INT8 calls for the acceptance ratio"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    started = time.perf_counter()
    r50, r50_pool = resnet50(args.calibration_images)
    dig, dig_pool = digits(args.digits_checkpoint)
    opts, tuning = dict(BASELINE), list[dict[str, Any]]()
    torch_threads, torch_tuning = 2, dict[str, float]()
    if not args.no_tune:
        x8 = np.ascontiguousarray(np.resize(r50_pool, (8, *r50_pool.shape[1:])))
        torch_threads, torch_tuning = tune_torch_threads(r50["folded"], x8, args.tune_budget)
        print(f"PyTorch threads on ResNet-50 batch 8 (img/s): {torch_tuning} -> {torch_threads}")
        candidates = {"ort fp32": r50["fp32"], "ort int8-qdq-ort": r50["int8-ort"]}
        opts, tuning = tune(candidates, x8, args.tune_budget)
        print("ORT option tuning on ResNet-50 batch 8 (img/s):")
        for row in tuning:
            print(
                f"  {row['option']:<26} {str(row['value'])[:60]:<62} fp32 {row['ort fp32']:7.1f}"
                f"   int8-ort {row['ort int8-qdq-ort']:7.1f}"
            )
        print(f"chosen options: {json.dumps(opts)}")
    cells = run_table(r50, r50_pool, args.batches, opts, args.budget)
    cells += run_table(dig, dig_pool, args.batches, opts, args.budget)
    print_table(cells)
    ratios = {}
    for b in args.batches:
        by = {c.backend: c.throughput_img_s for c in cells if c.model == "resnet50" and c.batch == b}
        ratios[b] = by["ort int8-qdq-ort"] / by["ort fp32"]
    print(
        "ResNet-50 ORT INT8 (ort variant) / FP32 throughput, from the table: "
        + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items())
    )
    paired = {}
    for b in (1, 8):
        x = np.ascontiguousarray(np.resize(r50_pool, (b, *r50_pool.shape[1:])))
        int8_fn, fp32_fn = ort_fn(session(r50["int8-ort"], opts)), ort_fn(session(r50["fp32"], opts))
        paired[str(b)] = paired_ratio(int8_fn, fp32_fn, x, args.paired_rounds)
        r = paired[str(b)]["ratio_of_medians"]
        print(
            f"paired (alternating) at batch {b}: INT8/FP32 = {r:.2f}x "
            f"-> {'meets' if r >= 2.5 else 'misses'} the 2.5x target"
        )
    payload = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "versions": tool_versions(),
        "opset": [o.version for o in onnx.load_from_string(r50["fp32"]).opset_import],
        "ort_options": opts,
        "ort_tuning": tuning,
        "torch_threads": torch_threads,
        "torch_thread_tuning": torch_tuning,
        "cells": [asdict(c) for c in cells],
        "resnet50_int8_over_fp32": {str(b): r for b, r in ratios.items()},
        "resnet50_int8_over_fp32_paired": paired,
        "seconds": time.perf_counter() - started,
    }
    write_json_atomic(args.out, payload)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
