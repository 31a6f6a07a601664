"""The report: the table printed last, the verdicts on the ResNet-50 targets, and gpu_check.json."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lab.gpu_check.row import Row
from lab.gpu_check.settings import Settings

RESNET50_TARGET = 3000.0  # images/s, PyTorch CUDA FP16 at batch 128 on an H100
SERVED_FRACTION_TARGET = 0.6


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row], batches: tuple[int, ...], concurrency: tuple[int, ...]) -> str:
    head = ["model", "backend", "prec", "parity", "rel err", "top1 agr", "acc"]
    head += [f"b{b} img/s" for b in batches] + [f"b{batches[0]} p50/p99 ms", f"b{batches[-1]} p50/p99 ms"]
    head += [f"c{c} img/s" for c in concurrency] + [f"c{concurrency[-1]} p50/p99 ms"]
    lines = []
    for r in rows:
        tp = r.throughput
        sv = r.served

        def pp(d: dict[str, dict[str, float]], k: Any) -> str:
            s = d.get(str(k))
            return f"{s['p50_ms']:.2f}/{s['p99_ms']:.2f}" if s else "-"

        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f} ({fmt(r.reference_accuracy, '.3f')})"
        cells = [
            r.model,
            r.backend,
            r.precision,
            r.parity[:60],
            fmt(r.rel_error, ".1e"),
            fmt(r.top1_agreement, ".3f"),
            acc,
        ]
        cells += [fmt(tp.get(str(b), {}).get("images_per_s"), ".0f") for b in batches]
        cells += [pp(tp, batches[0]), pp(tp, batches[-1])]
        cells += [fmt(sv.get(str(c), {}).get("images_per_s"), ".0f") for c in concurrency]
        cells += [pp(sv, concurrency[-1])]
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def targets(rows: list[Row], batches: tuple[int, ...], concurrency: tuple[int, ...]) -> list[str]:
    """The issue's ResNet-50 targets, judged on what was measured (never on a dry run's CPU stand-ins)."""
    verdicts = []
    torch16 = next(
        (r for r in rows if r.model == "resnet50" and r.backend == "torch-cuda" and r.precision == "fp16"),
        None,
    )
    big = str(max(batches))
    if torch16 is None or big not in torch16.throughput:
        return ["targets: not measured (no ResNet-50 PyTorch CUDA FP16 run)"]
    inproc = torch16.throughput[big]["images_per_s"]
    ok = "pass" if inproc >= RESNET50_TARGET and big == "128" else "FAIL"
    verdicts.append(
        f"target ResNet-50 torch-cuda fp16 batch {big}: {inproc:.0f} img/s (>= {RESNET50_TARGET:.0f}): {ok}"
    )
    top = str(max(concurrency))
    if top in torch16.served:
        served = torch16.served[top]["images_per_s"]
        ratio = served / inproc if inproc else 0.0
        verdict = "pass" if ratio >= SERVED_FRACTION_TARGET else "FAIL"
        verdicts.append(
            f"target served at concurrency {top}: {served:.0f} img/s = {ratio:.0%} of in-process "
            f"(>= {SERVED_FRACTION_TARGET:.0%}): {verdict}"
        )
    else:
        verdicts.append("target served: not measured (" + "; ".join(torch16.notes or ["no served run"]) + ")")
    return verdicts


def report_of(cfg: Settings, env: dict[str, Any], rows: list[Row], skipped: list[str]) -> dict[str, Any]:
    return {
        "environment": env,
        "dry_run": cfg.dry_run,
        "rows": [asdict(r) for r in rows],
        "skipped": skipped,
        "targets": [] if cfg.dry_run else targets(rows, cfg.batches, cfg.served_concurrency),
        "elapsed_s": round(time.perf_counter() - cfg.started, 1),
    }


def save(out: Path, report: dict[str, Any]) -> Path:
    from resnet_serve.formats.files import write_json_atomic

    path = out / "gpu_check.json"
    write_json_atomic(path, report)
    return path


def render(report: dict[str, Any], batches: tuple[int, ...], concurrency: tuple[int, ...]) -> str:
    rows = [Row(**{k: v for k, v in r.items()}) for r in report["rows"]]
    parts = [
        "",
        "GPU check" + (" (DRY RUN on CPU: stand-in backends, not GPU numbers)" if report["dry_run"] else ""),
    ]
    env = report["environment"]
    parts.append(
        f"GPU: {env.get('gpu', 'none')}  torch {env.get('torch')} (CUDA {env.get('torch_cuda')})  "
        f"TensorRT {env.get('tensorrt')}  onnxruntime {env.get('onnxruntime')} "
        f"{env.get('ort_providers')}"
    )
    parts += [f"skipped: {s}" for s in report["skipped"]]
    for r in rows:
        parts += [f"note ({r.model} {r.backend} {r.precision}): {n}" for n in dict.fromkeys(r.notes)]
    parts += report["targets"]
    parts += report.get("decode", {}).get("lines", [])
    parts += ["", table(rows, batches, concurrency), f"({report['elapsed_s']:.0f} s)"]
    return "\n".join(parts)
