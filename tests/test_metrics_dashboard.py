"""The Grafana dashboard, the Prometheus config and docker-compose.yml agree with what the server exports."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

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


def test_dashboard_queries_a_datasource_variable_so_it_imports_into_any_grafana() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    chooser = variables["datasource"]
    assert chooser["type"] == "datasource" and chooser["query"] == "prometheus"
    using = [p["datasource"] for p in dashboard["panels"]]
    using += [t["datasource"] for p in dashboard["panels"] for t in p["targets"]]
    using += [v["datasource"] for v in variables.values() if v["type"] == "query"]
    assert using and all(d == {"type": "prometheus", "uid": "${datasource}"} for d in using), using
    # No uid of one particular Grafana anywhere: an import elsewhere would find no such datasource.
    uids = set(re.findall(r'"uid": "([^"]*)"', DASHBOARD.read_text()))
    assert uids == {"${datasource}", dashboard["uid"]}, uids
    # In docker-compose the provisioned Prometheus is the default, which the variable starts on.
    provisioned = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert re.search(r"^\s*isDefault:\s*true\s*$", provisioned, re.M)


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


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose not installed")
    base = {k: v for k, v in os.environ.items() if k not in {"GRAFANA_ADMIN_PASSWORD", "PUBLISH_ADDRESS"}}
    return subprocess.run(
        [compose, "-f", "docker-compose.yml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def test_compose_file_is_valid_and_reserves_a_gpu_for_the_server() -> None:
    done = _compose("config", env={"GRAFANA_ADMIN_PASSWORD": "not-admin"})
    assert done.returncode == 0, done.stderr
    server = done.stdout.split("\n  server:\n", 1)[1]
    assert "driver: nvidia" in server
    assert "published: 8002" in server or ":8002:8002" in server


def test_compose_publishes_every_port_on_loopback_unless_told_otherwise() -> None:
    for profile in ("cpu", "gpu"):
        done = _compose("--profile", profile, "config", env={"GRAFANA_ADMIN_PASSWORD": "not-admin"})
        assert done.returncode == 0, done.stderr
        published = {
            name: service.get("ports", [])
            for name, service in yaml.safe_load(done.stdout)["services"].items()
        }
        ports = [p for ps in published.values() for p in ps]
        numbers = {str(p).split(":")[-1].split("/")[0] for p in ports}
        assert {"3000", "9090", "8000", "8001", "8002"} <= numbers, published
        assert all(str(p).startswith("127.0.0.1:") for p in ports), published
    opened = _compose("config", env={"GRAFANA_ADMIN_PASSWORD": "x", "PUBLISH_ADDRESS": "0.0.0.0"})
    assert "0.0.0.0:3000:3000" in opened.stdout


def test_compose_refuses_to_start_grafana_without_an_admin_password() -> None:
    done = _compose("config")
    assert done.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD" in done.stderr
    assert ":-admin" not in (ROOT / "docker-compose.yml").read_text()
