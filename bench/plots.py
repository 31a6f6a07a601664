"""PNG plots of a benchmark: the latency–throughput curve with its percentiles, and the latency CDFs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from resnet_serve.bench.loadgen import StepResult

CURVES = (("p50", "o-"), ("p90", "s--"), ("p99", "^-."), ("p99.9", "v:"))


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def latency_throughput(doc: dict[str, Any], path: Path, title: str) -> Path:
    """Latency percentiles against throughput, one point per sweep step, labelled with its load."""
    plt = pyplot()
    steps = sorted((s for s in doc["steps"] if s["requests"] > 0), key=lambda s: s["throughput"])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    x = [s["throughput"] for s in steps]
    for key, style in CURVES:
        ax.plot(x, [s["latency_ms"][key] for s in steps], style, label=key, markersize=4)
    for s in steps:
        load = f"c={s['concurrency']}" if s["mode"] == "closed" else f"{s['target_rate']:g}/s"
        ax.annotate(load, (s["throughput"], s["latency_ms"]["p50"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color="dimgray")  # fmt: skip
    if doc.get("baseline"):
        best = min(doc["baseline"], key=lambda b: b["batch_size"])
        ax.axhline(best["latency_ms"]["p50"], color="gray", linestyle=":", linewidth=1,
                   label=f"in-process p50 (batch {best['batch_size']})")  # fmt: skip
    if doc.get("slo"):
        ax.axhline(
            doc["slo"]["p99_ms"], color="red", linewidth=1, label=f"SLO p99 {doc['slo']['p99_ms']:g} ms"
        )
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, plt, path)


def latency_cdf(steps: list[StepResult], path: Path, title: str) -> Path:
    """The empirical CDF of each step's latencies (log time axis), tail emphasised."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for step in steps:
        if step.latencies_s.size == 0:
            continue
        ms = np.sort(step.latencies_s) * 1e3
        frac = np.arange(1, ms.size + 1) / ms.size
        ax.plot(ms, frac, label=f"{step.load.label} ({step.throughput:.0f}/s)", linewidth=1.2)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests ≤ latency")
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, plt, path)


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis 0.5, 2, 10 rather than 5×10⁻¹, 2×10⁰, 10¹."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain)


def save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
