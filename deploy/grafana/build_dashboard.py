"""Writes deploy/grafana/dashboards/resnet-serve.json, the Grafana dashboard for resnet-serve's metrics.

The dashboard is generated so that its ~20 panels share one layout and one query style; edit this file and
run `python deploy/grafana/build_dashboard.py`, then commit both. tests/test_metrics_dashboard.py checks
that every query names metrics the server really exports and that the JSON matches this script.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "resnet-serve.json"
# Every panel and variable queries the datasource the `datasource` variable picks (default: Grafana's default
# Prometheus datasource, which provisioning/datasources is in docker-compose), so the JSON imports into any
# Grafana whatever its datasources' uids.
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = {"type": "prometheus", "uid": f"${{{DATASOURCE_VARIABLE}}}"}
JOB = 'job=~"$job"'
SEL = f'{JOB}, model=~"$model"'
RATE = "$__rate_interval"
PHASES = (
    ("request", "End-to-end latency"),
    ("compute", "Compute (backend batch execution)"),
    ("queue", "Queue wait"),
    ("preprocess", "Preprocessing (decode, resize, normalise)"),
)


def target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def panel(
    title: str,
    targets: list[dict[str, Any]],
    unit: str,
    pos: tuple[int, int, int, int],
    kind: str = "timeseries",
    description: str = "",
    **options: Any,
) -> dict[str, Any]:
    x, y, w, h = pos
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets,
        **options,
    }


def quantiles(metric: str) -> list[dict[str, Any]]:
    return [
        target(
            f"histogram_quantile({q}, sum by (le, model) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{model}}}}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        panel(
            "Throughput (successful requests/s)",
            [
                target(
                    "sum by (model, version) "
                    f'(rate(resnet_serve_requests_total{{{SEL}, outcome="success"}}[{RATE}]))',
                    "{{model}} v{{version}}",
                    "A",
                )
            ],
            "reqps",
            (0, 0, 8, 8),
        ),
        panel(
            "Inferences/s",
            [
                target(
                    f"sum by (model, version) (rate(resnet_serve_inferences_total{{{SEL}}}[{RATE}]))",
                    "{{model}} v{{version}}",
                    "A",
                )
            ],
            "short",
            (8, 0, 8, 8),
            description="Images classified per second; a batch request of n images counts n.",
        ),
        panel(
            "Errors/s by reason",
            [
                target(
                    "sum by (model, outcome) (rate(resnet_serve_requests_total"
                    f'{{{JOB}, model=~"$model|_unknown", outcome!="success"}}[{RATE}]))',
                    "{{model}} {{outcome}}",
                    "A",
                )
            ],
            "reqps",
            (16, 0, 8, 8),
            description="Failed requests by outcome; requests for models that are not served appear as "
            "model _unknown, outcome not_found.",
        ),
    ]
    for i, (phase, title) in enumerate(PHASES):
        out.append(
            panel(
                f"{title}: p50 / p95 / p99",
                quantiles(f"resnet_serve_{phase}_duration_seconds"),
                "s",
                ((i % 2) * 12, 8 + (i // 2) * 8, 12, 8),
                description="Successful requests only; quantiles are interpolated within histogram buckets "
                "(docs/metrics.md lists them).",
            )
        )
    y = 24
    out += [
        panel(
            "Average batch size",
            [
                target(
                    f"sum by (model) (rate(resnet_serve_inferences_total{{{SEL}}}[{RATE}]))"
                    f" / sum by (model) (rate(resnet_serve_executions_total{{{SEL}}}[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "short",
            (0, y, 8, 8),
            description="Inferences ÷ executions, as Triton's nv_inference_count / nv_inference_exec_count.",
        ),
        panel(
            "Batch size distribution",
            [
                target(
                    f"sum by (le) (increase(resnet_serve_batch_size_bucket{{{SEL}}}[{RATE}]))",
                    "{{le}}",
                    "A",
                    format="heatmap",
                )
            ],
            "short",
            (8, y, 8, 8),
            kind="heatmap",
            description="Executed batches per batch-size bucket (upper bounds).",
            options={"calculate": False, "yAxis": {"unit": "short"}, "cellGap": 1},
        ),
        panel(
            "Queue depth and requests in flight",
            [
                target(f"sum by (model) (resnet_serve_queue_depth{{{SEL}}})", "queued {{model}}", "A"),
                target(
                    f"sum by (model) (resnet_serve_requests_in_flight{{{SEL}}})", "in flight {{model}}", "B"
                ),
            ],
            "short",
            (16, y, 8, 8),
        ),
    ]
    y += 8
    out += [
        panel(
            "Model ready",
            [target(f"resnet_serve_model_ready{{{SEL}}}", "{{model}} v{{version}}", "A")],
            "bool_yes_no",
            (0, y, 6, 6),
            kind="stat",
        ),
        panel(
            "Model load time",
            [target(f"resnet_serve_model_load_duration_seconds{{{SEL}}}", "{{model}} v{{version}}", "A")],
            "s",
            (6, y, 6, 6),
            kind="stat",
        ),
        panel(
            "GPU utilisation",
            [target(f"resnet_serve_gpu_utilization_ratio{{{JOB}}}", "gpu {{gpu}} {{name}}", "A")],
            "percentunit",
            (12, y, 6, 6),
            description="Empty on CPU-only servers: the NVML collector exports nothing without a GPU.",
        ),
        panel(
            "GPU memory used",
            [
                target(f"resnet_serve_gpu_memory_used_bytes{{{JOB}}}", "used gpu {{gpu}}", "A"),
                target(f"resnet_serve_gpu_memory_total_bytes{{{JOB}}}", "total gpu {{gpu}}", "B"),
            ],
            "bytes",
            (18, y, 6, 6),
        ),
    ]
    y += 6
    out += [
        panel(
            "Server process CPU",
            [target(f"rate(process_cpu_seconds_total{{{JOB}}}[{RATE}])", "{{instance}}", "A")],
            "percentunit",
            (0, y, 12, 6),
            description="CPU seconds per second: 1.0 is one fully used core.",
        ),
        panel(
            "Server process memory (RSS)",
            [target(f"process_resident_memory_bytes{{{JOB}}}", "{{instance}}", "A")],
            "bytes",
            (12, y, 12, 6),
        ),
    ]
    for i, p in enumerate(out, start=1):
        p["id"] = i
    return out


def dashboard() -> dict[str, Any]:
    def variable(name: str, query: str, label: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": query, "refId": name},
            "definition": query,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "refresh": 2,
            "sort": 1,
        }

    return {
        "uid": "resnet-serve",
        "title": "resnet-serve",
        "description": "Latency per phase, throughput, errors, batching and resources of resnet-serve "
        "(docs/metrics.md).",
        "tags": ["resnet-serve", "inference"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-15m", "to": "now"},
        "timezone": "",
        "templating": {
            "list": [
                {
                    "name": DATASOURCE_VARIABLE,
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},  # Grafana picks the default Prometheus datasource
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                variable("job", "label_values(resnet_serve_model_ready, job)", "Job"),
                variable("model", 'label_values(resnet_serve_model_ready{job=~"$job"}, model)', "Model"),
            ]
        },
        "annotations": {"list": []},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=OUT.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(render())
    os.replace(tmp.name, OUT)
    print(f"wrote {OUT} ({len(dashboard()['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
