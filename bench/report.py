"""The benchmark's outputs: the JSON document, the CSV of steps and the table printed on the terminal."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from resnet_serve.bench.baseline import BaselineResult
from resnet_serve.bench.loadgen import Closed, Open, StepResult
from resnet_serve.bench.stats import PERCENTILES, percentile_key
from resnet_serve.formats.files import write_bytes_atomic, write_json_atomic

FORMAT = "resnet-serve-bench/1"


def step_dict(step: StepResult, overhead: float | None) -> dict[str, Any]:
    return {
        "phase": step.phase,
        "mode": "closed" if isinstance(step.load, Closed) else "open",
        "concurrency": step.load.concurrency if isinstance(step.load, Closed) else None,
        "target_rate": step.load.rate if isinstance(step.load, Open) else None,
        "batch_size": step.batch_size,
        "throughput": step.throughput,
        "requests": step.requests,
        "duration_s": step.duration_s,
        "latency_ms": step.latency.as_dict(),
        "errors": step.errors,
        "error_count": sum(step.errors.values()),
        "server_ms": step.server,
        "stable": step.stable,
        "windows": step.windows,
        "offered_rate": step.offered_rate,
        "sent_rate": step.sent_rate,
        "backlog": step.backlog,
        "backlog_growth_per_s": step.backlog_growth,
        "max_send_lag_ms": step.max_send_lag_ms,
        "kept_up": step.kept_up,
        "overhead_p50": overhead,
    }


def overhead_ratio(step: StepResult, baseline: list[BaselineResult]) -> float | None:
    """Server p50 latency ÷ in-process p50 at the batch size the server ran (nearest measured)."""
    if not baseline or step.requests == 0:
        return None
    batch = step.server["batch_size"] if step.server else step.batch_size
    nearest = min(baseline, key=lambda b: abs(b.batch_size - batch))
    base = nearest.latency["p50"]
    return step.latency["p50"] / base if base > 0 else None


def overhead_summary(steps: list[StepResult], baseline: list[BaselineResult]) -> dict[str, Any] | None:
    measured = [s for s in steps if s.requests > 0]
    if not baseline or not measured:
        return None
    lightest = min(measured, key=lambda s: s.throughput)
    best = max(measured, key=lambda s: s.throughput)
    best_base = max(baseline, key=lambda b: b.throughput)
    return {
        "latency_ratio_p50_at_lightest_load": overhead_ratio(lightest, baseline),
        "lightest_load": lightest.load.label,
        "throughput_ratio_at_best": best.throughput / best_base.throughput if best_base.throughput else None,
        "best_load": best.load.label,
        "baseline_best_batch_size": best_base.batch_size,
    }


def document(
    config: dict[str, Any],
    environment: dict[str, Any],
    steps: list[StepResult],
    baseline: list[BaselineResult],
    slo: dict[str, Any] | None,
    stopped: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The bench.json document; `stopped` says why a sweep ended before its last level ({"reason":
    "interrupted" or "server gone", "steps": measured, "levels": planned}), None when it ran to the end."""
    return {
        "format": FORMAT,
        "stopped": stopped,
        "config": config,
        "environment": environment,
        "steps": [step_dict(s, overhead_ratio(s, baseline)) for s in steps],
        "baseline": [b.as_dict() for b in baseline] or None,
        "overhead": overhead_summary(steps, baseline),
        "slo": slo,
    }


CSV_COLUMNS = [
    "phase", "mode", "concurrency", "target_rate", "batch_size", "throughput", "requests", "duration_s",
    *(f"latency_{percentile_key(p)}_ms" for p in PERCENTILES), "latency_mean_ms", "latency_max_ms",
    "error_count", "errors",
    "server_queue_ms", "server_preprocess_ms", "server_compute_ms", "server_batch_size",
    "stable", "windows", "offered_rate", "sent_rate", "backlog", "backlog_growth_per_s", "max_send_lag_ms",
    "kept_up", "overhead_p50",
]  # fmt: skip


def csv_text(doc: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in doc["steps"]:
        row = {k: v for k, v in step.items() if k in CSV_COLUMNS}
        latency = step["latency_ms"]
        row |= {f"latency_{percentile_key(p)}_ms": latency[percentile_key(p)] for p in PERCENTILES}
        row |= {"latency_mean_ms": latency["mean"], "latency_max_ms": latency["max"]}
        row["errors"] = ";".join(f"{code}={n}" for code, n in sorted(step["errors"].items()))
        for key in ("queue", "preprocess", "compute"):
            row[f"server_{key}_ms"] = step["server_ms"][f"{key}_ms"] if step["server_ms"] else None
        row["server_batch_size"] = step["server_ms"]["batch_size"] if step["server_ms"] else None
        writer.writerow(row)
    return buffer.getvalue()


def write(doc: dict[str, Any], out: Path) -> list[Path]:
    written = [out / "bench.json", write_csv(doc, out / "bench.csv")]
    write_json_atomic(written[0], doc)
    return written


def write_csv(doc: dict[str, Any], path: Path) -> Path:
    """The steps as CSV at `path` (bench.csv, or perf_analyzer's -f FILE)."""
    write_bytes_atomic(path, csv_text(doc).encode())
    return path


def table(doc: dict[str, Any]) -> str:
    """The steps as a fixed-width table, then the overhead and SLO lines."""
    head = (
        f"{'load':>16} {'infer/s':>9} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'err':>5} "
        f"{'queue':>7} {'prep':>6} {'comp':>7} {'batch':>5} {'backlog':>7} {'stable':>6} {'ovh×':>5}"
    )
    lines = [head, "-" * len(head)]
    for s in doc["steps"]:
        load = f"c={s['concurrency']}" if s["mode"] == "closed" else f"r={s['target_rate']:g}/s"
        if s["phase"] != "sweep":
            load = f"({s['phase']}) {load}"
        lat = s["latency_ms"]
        srv = s["server_ms"] or {}
        lines.append(
            f"{load:>16} {s['throughput']:9.1f} {lat['p50']:8.2f} {lat['p90']:8.2f} {lat['p99']:8.2f} "
            f"{lat['p99.9']:8.2f} {s['error_count']:5d} {_num(srv.get('queue_ms'), 7, 2)} "
            f"{_num(srv.get('preprocess_ms'), 6, 2)} {_num(srv.get('compute_ms'), 7, 2)} "
            f"{_num(srv.get('batch_size'), 5, 1)} {_num(s['backlog'], 7, 0)} "
            f"{'yes' if s['stable'] else 'no':>6} {_num(s['overhead_p50'], 5, 1)}"
        )
    lines.append(
        "latencies in ms, client-side (open loop: from the scheduled send time); queue/prep/comp: server"
    )
    for s in doc["steps"]:
        if s["mode"] == "open" and s["kept_up"] is False:
            lines.append(
                f"r={s['target_rate']:g}/s: the server did NOT keep up: {s['throughput']:.1f} infer/s "
                f"answered, {s['backlog']} requests waiting when measuring stopped, growing by "
                f"{s['backlog_growth_per_s']:.1f}/s"
            )
    if doc.get("stopped"):
        ended = doc["stopped"]
        lines.append(
            f"STOPPED EARLY ({ended['reason']}): {ended['steps']} of {ended['levels']} load levels measured"
        )
    if doc["overhead"]:
        o = doc["overhead"]
        lines.append(
            "overhead vs in-process baseline: p50 latency "
            f"×{_fmt(o['latency_ratio_p50_at_lightest_load'])} at {o['lightest_load']}; "
            f"best throughput {_fmt(o['throughput_ratio_at_best'])}× the baseline's "
            f"(batch {o['baseline_best_batch_size']})"
        )
    if doc["slo"]:
        slo = doc["slo"]
        if slo["best"] is None:
            lines.append(f"SLO p99 ≤ {slo['p99_ms']:g} ms: no measured load met it")
        else:
            lines.append(
                f"SLO p99 ≤ {slo['p99_ms']:g} ms: best {slo['throughput']:.1f} infer/s at {slo['best']} "
                f"(p99 {slo['p99_at_best_ms']:.2f} ms)"
            )
    return "\n".join(lines)


def _num(value: float | int | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"
