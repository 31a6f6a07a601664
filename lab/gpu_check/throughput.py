"""In-process throughput and latency of one backend at each batch size (bench's timing loop and latency
statistics), and a candidate's whole in-process run: load, parity, throughput."""

from __future__ import annotations

from typing import Any

import numpy as np

from lab.gpu_check.backends import Candidate
from lab.gpu_check.model import Model
from lab.gpu_check.parity import parity
from lab.gpu_check.row import Row
from lab.gpu_check.settings import Settings, Skip, first_line, log
from resnet_serve.bench.baseline import timed_runs
from resnet_serve.bench.stats import LatencySummary


def latency_stats(latencies: list[float], images: int) -> dict[str, float]:
    summary = LatencySummary.of(latencies)
    busy = float(sum(latencies))
    return {
        "images_per_s": round(images / busy if busy > 0 else 0.0, 1),
        "p50_ms": round(summary["p50"], 3),
        "p99_ms": round(summary["p99"], 3),
        "calls": summary.count,
    }


def throughput(backend: Any, sample: np.ndarray, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    name = backend.info.inputs[0].name
    out = {}
    for n in batches:
        x = np.ascontiguousarray(np.broadcast_to(sample, (n, *sample.shape)))
        # Three warm-up runs: CUDA graphs, cuDNN autotuning and TensorRT contexts settle on first use.
        latencies = timed_runs(backend, {name: x}, seconds, warmup=3)
        out[str(n)] = latency_stats(latencies, n * len(latencies))
    return out


def run_candidate(cfg: Settings, model: Model, cand: Candidate) -> tuple[Row, Any]:
    row = Row(model.name, cand.backend, cand.precision)
    try:
        cfg.require_time(30, f"{cand.backend} {cand.precision}")
        log(f"{model.name}: {cand.backend} {cand.precision}: load")
        backend = cand.make()
    except Skip as err:
        row.parity = str(err)
        return row, None
    except Exception as err:
        row.parity = f"load failed: {first_line(err)}"
        return row, None
    try:
        logits = backend.infer({backend.info.inputs[0].name: model.inputs})[backend.info.outputs[0].name]
        parity(row, model, np.asarray(logits, dtype=np.float32))
        log(f"{model.name}: {cand.backend} {cand.precision}: parity {row.parity}, throughput")
        row.throughput = throughput(backend, model.inputs[0], cfg.batches, cfg.seconds_per_point)
    except Exception as err:
        row.notes.append(f"run failed: {first_line(err)}")
    return row, backend
