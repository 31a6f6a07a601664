"""The Grafana dashboard, the Prometheus config and docker-compose.yml agree with what the server exports."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from resnet_serve.server.observability.gpu import gpu_metric_families
from resnet_serve.server.observability.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "resnet-serve.json"
# PromQL words that look like metric names but are functions, keywords or label names.
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "le", "model", "version", "outcome", "job",
    "instance", "gpu", "name",
}  # fmt: skip


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_dashboard", ROOT / "deploy/grafana/build_dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_exprs() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    return exprs


def exported_sample_names() -> set[str]:
    """Every sample name a server with one busy model exports, plus the GPU gauges."""
    metrics = ServerMetrics()
    model = metrics.model("m", "1")
    model.request_done("success", 0.01, 0.001, 0.001, 0.005)
    model.batch_executed(1, 0.005)
    names = {s.name for family in metrics.registry.collect() for s in family.samples}
    return names | {family.name for family in gpu_metric_families()}  # gauges: sample name = family name


def metric_names(expr: str) -> set[str]:
    # Strip label matchers and quoted strings first, so label values never look like metric names.
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}", "{}", bare)
    bare = re.sub(r"\[[^\]]*\]", "[]", bare)
    bare = re.sub(r"by \([^)]*\)", "", bare)
    return {w for w in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", bare) if w not in PROMQL_WORDS}


def test_every_dashboard_query_names_only_metrics_the_server_exports() -> None:
    exported = exported_sample_names()
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert used, "no metric names found in the dashboard"
    assert used <= exported, f"dashboard uses metrics nobody exports: {sorted(used - exported)}"
    # The must-haves are all on the dashboard.
    for required in (
        "resnet_serve_request_duration_seconds_bucket",
        "resnet_serve_queue_duration_seconds_bucket",
        "resnet_serve_preprocess_duration_seconds_bucket",
        "resnet_serve_compute_duration_seconds_bucket",
        "resnet_serve_requests_total",
        "resnet_serve_batch_size_bucket",
        "resnet_serve_queue_depth",
        "resnet_serve_inferences_total",
        "resnet_serve_executions_total",
    ):
        assert required in used


def test_quantile_panels_aggregate_buckets_by_le() -> None:
    quantile_exprs = [e for e in dashboard_exprs() if "histogram_quantile" in e]
    assert len(quantile_exprs) == 12  # p50/p95/p99 of four phases
    for expr in quantile_exprs:
        assert re.search(r"sum by \((le, model|model, le)\) \(rate\(\w+_bucket\{", expr), expr


def test_dashboard_json_is_what_the_builder_writes() -> None:
    assert DASHBOARD.read_text() == load_builder().render(), "run python deploy/grafana/build_dashboard.py"


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_dashboard_datasource_is_the_provisioned_one() -> None:
    provisioned = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    uid = re.search(r"^\s*uid:\s*(\S+)\s*$", provisioned, re.M)
    assert uid is not None
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["datasource"]["uid"] == uid.group(1)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_dashboard_queries_parse_as_promql_and_the_scrape_config_is_valid(tmp_path: Path) -> None:
    # promtool has no "check expression"; a recording-rules file is the documented way to parse PromQL.
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$job", ".*")
        rules += [f"      - record: dashboard:expr{i}", f"        expr: {json.dumps(concrete)}"]
    (tmp_path / "rules.yml").write_text("\n".join(rules) + "\n")
    for args in (
        ["check", "rules", str(tmp_path / "rules.yml")],
        ["check", "config", "deploy/prometheus.yml"],
    ):
        done = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid_and_reserves_a_gpu_for_the_server() -> None:
    done = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    server = done.stdout.split("\n  server:\n", 1)[1]
    assert "driver: nvidia" in server
    assert "published: 8002" in server
