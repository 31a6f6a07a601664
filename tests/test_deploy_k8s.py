"""The Kubernetes and KServe manifests: every kustomization renders and validates offline
(deploy/validate.py), a broken manifest fails that validation, and the rendered objects keep the rules the
deployment depends on."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kserve_fixtures import KServeServer, kserve_server

from resnet_serve.client.channel import DEFAULT_TIMEOUT_S
from resnet_serve.server.config import OPTIONS, ServerConfig
from resnet_serve.server.observability.metrics import ServerMetrics

pytestmark = pytest.mark.slow  # kubectl kustomize takes about a second per kustomization

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["kserve_server"]  # the fixture, imported so pytest finds it


@cache
def validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_validate", ROOT / "deploy" / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def rendered(kustomization: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = validator().render(kustomization)
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (not name or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name}"
    return found[0]


def server(overlay: str) -> dict[str, Any]:
    pod = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


OVERLAYS = ("deploy/k8s/overlays/cpu", "deploy/k8s/overlays/gpu")


@pytest.mark.parametrize("kustomization", validator().KUSTOMIZATIONS)
def test_every_kustomization_renders_and_validates_strictly(kustomization: str) -> None:
    docs = rendered(kustomization)
    assert docs
    assert [p for doc in docs for p in validator().problems(doc)] == []


def test_both_overlays_render_every_object_the_deployment_needs() -> None:
    for overlay in OVERLAYS:
        kinds = sorted(d["kind"] for d in rendered(overlay))
        for kind in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"):
            assert kind in kinds, (overlay, kind)
        assert kinds.count("Service") == 2


# ------------------------------------------------------------------------------- a broken manifest fails


def _overlay(tmp_path: Path, patch: str, resources: tuple[str, ...] = ()) -> Path:
    base = ROOT / "deploy" / "k8s" / "base"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(base, tmp_path), *resources],  # kustomize: relative only
                "patches": [{"path": "patch.yaml"}],
            }
        )
    )
    (tmp_path / "patch.yaml").write_text(patch)
    return tmp_path


def test_a_misspelled_probe_field_fails_validation(tmp_path: Path) -> None:
    overlay = _overlay(
        tmp_path,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: resnet-serve}\n"
        "spec:\n  template:\n    spec:\n      containers:\n        - name: server\n"
        "          readinessProbe: {grpc: {prot: 8001}}\n",
    )
    found = [p for doc in validator().render(overlay) for p in validator().problems(doc)]
    assert any("readinessProbe.grpc" in p and "'prot' was unexpected" in p for p in found), found


def test_a_wrong_type_and_a_broken_custom_resource_fail_validation(tmp_path: Path) -> None:
    isvc = one(rendered("deploy/kserve"), "InferenceService")
    model = {"modelFormat": {"version": "1"}, "runtime": "resnet-serve", "protocolVersion": 2}
    found = list(validator().problems({**isvc, "spec": {"predictor": {"model": model}}}))
    assert any("'name' is a required property" in p for p in found), found  # modelFormat's name
    assert any("2 is not of type 'string'" in p for p in found), found
    deployment = one(rendered(OVERLAYS[0]), "Deployment")
    assert list(validator().problems({**deployment, "spec": {**deployment["spec"], "replicas": "two"}}))
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any("no schema" in p for p in validator().problems(unknown))


def test_a_kustomization_that_does_not_render_fails(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path, "{}\n", resources=("missing.yaml",))
    with pytest.raises(RuntimeError, match=r"missing\.yaml"):
        validator().render(overlay)


# ------------------------------------------------------------------------- the rules the manifests keep


KSERVE_SERVICE = "inference.GRPCInferenceService"  # the grpc.health.v1 service name readiness asks about
LIVE = {"path": "/v2/health/live"}


def _probes_ask_live_and_ready_apart(container: dict[str, Any], http_port: object) -> None:
    # Triton's chart: liveness asks "is the process answering" (/v2/health/live, true while a model fails or
    # a drain runs), readiness "can it serve" (gRPC health of the KServe service).
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {**LIVE, "port": http_port}, probe
        assert "grpc" not in container[probe], probe
    assert container["readinessProbe"]["grpc"] == {"port": 8001, "service": KSERVE_SERVICE}
    # A busy pod answers health late now and then: one slow answer must not drop it from the endpoints.
    readiness = container["readinessProbe"]
    assert readiness["timeoutSeconds"] >= 3 and readiness["failureThreshold"] >= 3
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 30  # but a broken pod leaves soon


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_drain_and_grace_period(overlay: str) -> None:
    pod = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    _probes_ask_live_and_ready_apart(container, "http")
    # Liveness cannot fail during a drain: it needs longer than the grace period.
    liveness = container["livenessProbe"]
    grace = float(env_of(container).get("RESNET_SERVE_GRACE_PERIOD_S", ServerConfig().grace_period_s))
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False  # the server never calls the Kubernetes API


def test_the_probed_health_service_is_the_one_the_server_registers() -> None:
    from resnet_serve.server.kserve.service import SERVICE

    assert SERVICE == KSERVE_SERVICE


def test_the_probes_the_manifests_name_answer_on_a_real_server(kserve_server: KServeServer) -> None:
    import urllib.request

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    container = server(OVERLAYS[0])
    path = container["livenessProbe"]["httpGet"]["path"]
    with urllib.request.urlopen(f"http://{kserve_server.http_url}{path}", timeout=10) as answer:
        assert answer.status == 200
    service = container["readinessProbe"]["grpc"]["service"]
    with grpc.insecure_channel(kserve_server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_owns_the_scale_and_replicas_spread_over_zones_and_nodes(overlay: str) -> None:
    docs = rendered(overlay)
    deployment = one(docs, "Deployment")
    # `kubectl apply -k` would reset the HPA's scale to a `replicas` in the manifest.
    assert "replicas" not in deployment["spec"]
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    pod = deployment["spec"]["template"]
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert constraint["labelSelector"]["matchLabels"]  # not every pod of the namespace
        assert constraint["maxSkew"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_opens_only_the_servers_ports(overlay: str) -> None:
    docs = rendered(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    opened = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert opened == {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    (metrics_rule,) = [r for r in policy["ingress"] if {p["port"] for p in r["ports"]} == {"metrics"}]
    assert all("namespaceSelector" in peer for peer in metrics_rule["from"])  # only Prometheus' namespace
    for rule in policy["ingress"]:
        assert rule["from"], "an empty `from` opens the port to every source"
    # Inference from any pod of the namespace: kustomize's labels must not narrow it to the server's own pods.
    (inference,) = [r for r in policy["ingress"] if {p["port"] for p in r["ports"]} == {"http", "grpc"}]
    assert inference["from"] == [{"podSelector": {}}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_connections_age_out_so_dns_balanced_clients_find_new_pods(overlay: str) -> None:
    env = env_of(server(overlay))
    age = {o.key: o.parse(env[o.env]) for o in OPTIONS if o.key.startswith("grpc_max_connection_age")}
    # Often enough that a scale-up is noticed within minutes, rarely enough that reconnecting costs nothing.
    assert 60_000 <= age["grpc_max_connection_age_ms"] <= 600_000
    # A call open at the GOAWAY may run to the client library's default deadline before it is cut.
    assert age["grpc_max_connection_age_grace_ms"] >= DEFAULT_TIMEOUT_S * 1000


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_model_repository_is_a_read_only_volume(overlay: str) -> None:
    docs = rendered(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert one(docs, "PersistentVolumeClaim", claim)
    assert env_of(container)["RESNET_SERVE_MODEL_REPOSITORY"] == "/models"


def test_the_gpu_overlay_takes_a_gpu_and_caches_engines_the_cpu_overlay_none() -> None:
    gpu, cpu = server(OVERLAYS[1]), server(OVERLAYS[0])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["image"].endswith("-gpu") and cpu["image"].endswith("-cpu")
    assert env_of(gpu)["RESNET_SERVE_BUILD_ENGINES"] == "true"
    assert any(m["mountPath"] == env_of(gpu)["RESNET_SERVE_ENGINE_CACHE"] for m in gpu["volumeMounts"])
    assert "nvidia.com/gpu" not in str(cpu["resources"])
    # The first start builds engines: the startup probe allows far longer on the GPU overlay.
    budget = gpu["startupProbe"]["periodSeconds"] * gpu["startupProbe"]["failureThreshold"]
    assert budget >= 600
    assert gpu["startupProbe"]["httpGet"] == {**LIVE, "port": "http"}  # the overlay adds no second handler


def _version() -> str:
    import tomllib

    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def _images() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for kustomization in validator().KUSTOMIZATIONS:
        for doc in rendered(kustomization):
            spec = doc.get("spec", {}).get("template", {}).get("spec", doc.get("spec", {}))
            found += [(kustomization, c) for c in spec.get("containers", [])]
    assert len(found) == 3
    return found


def test_every_image_is_fully_qualified_and_immutable_under_if_not_present() -> None:
    for where, container in _images():
        image = container["image"]
        registry, _, rest = image.partition("/")
        # A registry host (a dot or a port in the first component): CRI-O's short-name mode refuses others.
        assert rest and ("." in registry or ":" in registry or registry == "localhost"), (where, image)
        assert container["imagePullPolicy"] == "IfNotPresent", where
        name, _, digest = image.partition("@")
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
        # IfNotPresent only with a reference that never changes: a digest, or the release's version tag.
        assert digest.startswith("sha256:") or tag.startswith(_version() + "-"), (where, image)
        assert tag not in {"", "latest", "cpu", "gpu"}, (where, image)


def test_the_autoscaler_uses_a_metric_the_server_exports_through_the_adapters_rule() -> None:
    docs = rendered(OVERLAYS[1])
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    adapter = one(rendered("deploy/k8s/prometheus-adapter"), "ConfigMap")
    config = yaml.safe_load(adapter["data"]["config.yaml"])
    served = {rule["name"]["as"]: rule["seriesQuery"] for rule in config["rules"]}
    assert name in served and served[name].startswith(name + "{")
    metrics = ServerMetrics()
    metrics.model("tiny", "1").set_queue_depth(0)
    exported = {s.name for family in metrics.registry.collect() for s in family.samples}
    assert set(served) <= exported, set(served) - exported


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_scrape_and_disruption_budget_select_the_servers_pods(overlay: str) -> None:
    docs = rendered(overlay)
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    headless = one(docs, "Service", "resnet-serve-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in headless["spec"]["ports"]] == [8001]
    service = one(docs, "Service", "resnet-serve")
    for selector in (headless["spec"]["selector"], service["spec"]["selector"]):
        assert selector.items() <= labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_kserve_runs_our_image_over_v2_grpc() -> None:
    docs = rendered("deploy/kserve")
    runtime, isvc = one(docs, "ServingRuntime"), one(docs, "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    (container,) = runtime["spec"]["containers"]
    assert container["image"].rpartition("/")[2].startswith("resnet-serve:")
    assert env_of(container)["RESNET_SERVE_MODEL_REPOSITORY"] == "/mnt/models"  # the storage initializer's
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    _probes_ask_live_and_ready_apart(container, 8000)


def test_the_kserve_runtime_survives_an_engine_build_and_keeps_its_engines_across_restarts() -> None:
    runtime = one(rendered("deploy/kserve"), "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    # The entrypoint builds TensorRT engines before any port opens: minutes for a ResNet-50. Without a
    # startup probe the liveness probe (30 s) would restart the container in the middle of every build.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] < 60  # a hung server still restarts
    # The engines live on a volume, not in the container's layer: a container restart finds them built.
    cache = env_of(container)["RESNET_SERVE_ENGINE_CACHE"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
    (volume,) = [v for v in runtime["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume


# --------------------------------------------------------------------------------------------- alerts


def _alerts() -> dict[str, dict[str, Any]]:
    docs = rendered(OVERLAYS[0])
    rule = one(docs, "PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_the_alerts_cover_readiness_errors_latency_and_a_full_queue_with_exported_metrics() -> None:
    import re

    alerts = _alerts()
    assert set(alerts) == {
        "ResnetServeModelNotReady",
        "ResnetServeErrorRate",
        "ResnetServeP99LatencyHigh",
        "ResnetServeQueueFull",
    }
    metrics = ServerMetrics()
    model = metrics.model("m", "1")
    model.request_done("success", 0.01, 0.001, 0.001, 0.005)
    model.set_queue_depth(0)
    samples = [s for family in metrics.registry.collect() for s in family.samples]
    exported = {s.name for s in samples}
    outcomes = {s.labels.get("outcome") for s in samples if s.name == "resnet_serve_requests_total"}
    for name, alert in alerts.items():
        used = set(re.findall(r"\bresnet_serve_\w+", alert["expr"]))
        assert used and used <= exported, (name, used - exported)
        for value in re.findall(r'outcome=~?"([^"]+)"', alert["expr"]):
            assert set(value.split("|")) <= outcomes, (name, value)
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["annotations"]["summary"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) missing")
def test_the_alerts_fire_on_what_they_name_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    rule = one(rendered(OVERLAYS[0]), "PrometheusRule")
    groups = copy.deepcopy(rule["spec"]["groups"])  # rendered() is cached: leave its objects alone
    for group in groups:  # the expressions are under test; promtool would also compare rendered annotations
        for r in group["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    labels = 'namespace="inference",pod="p1",model="digits",version="1"'
    per_model = {"namespace": "inference", "model": "digits", "severity": "warning"}
    expected = {
        "ResnetServeModelNotReady": {**_labels(labels), "severity": "critical"},
        "ResnetServeErrorRate": per_model,
        "ResnetServeQueueFull": per_model,
        "ResnetServeP99LatencyHigh": per_model,
    }

    def case(ready: str, refused: str, fast: str) -> dict[str, Any]:
        """60 requests a minute for 30 minutes; `refused` of them queue_full, `fast` under 250 ms."""
        bucket = f"resnet_serve_request_duration_seconds_bucket{{{labels},le="
        series = {
            f"resnet_serve_model_ready{{{labels}}}": ready,
            f'resnet_serve_requests_total{{{labels},outcome="success"}}': "0+60x30",
            f'resnet_serve_requests_total{{{labels},outcome="queue_full"}}': refused,
            bucket + '"0.25"}': fast,
            bucket + '"1"}': fast,
            bucket + '"+Inf"}': "0+60x30",
        }
        return {"interval": "1m", "input_series": [{"series": k, "values": v} for k, v in series.items()]}

    failing = case(ready="0x30", refused="0+60x30", fast="0x30")
    failing["alert_rule_test"] = [
        {"eval_time": "20m", "alertname": name, "exp_alerts": [{"exp_labels": exp}]}
        for name, exp in expected.items()
    ]
    healthy = case(ready="1x30", refused="0x30", fast="0+60x30")
    healthy["alert_rule_test"] = [
        {"eval_time": "20m", "alertname": name, "exp_alerts": []} for name in expected
    ]
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [failing, healthy]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        ["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _labels(matchers: str) -> dict[str, str]:
    return dict(pair.replace('"', "").split("=") for pair in matchers.split(","))


@pytest.mark.parametrize("package", ["kubernetes_validate", "jsonschema"])
def test_validate_without_the_dev_extra_is_one_line_naming_the_extra(package: str) -> None:
    script = (
        f"import sys, runpy; sys.modules[{package!r}] = None; "  # as if not installed
        "runpy.run_path('deploy/validate.py', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert package in done.stderr and "'.[dev]'" in done.stderr


def test_the_vendored_schemas_name_their_release() -> None:
    readme = (ROOT / "deploy" / "schemas" / "README.md").read_text()
    for path in sorted((ROOT / "deploy" / "schemas").glob("*.json")):
        vendored = yaml.safe_load(path.read_text())
        assert "commit" in vendored["source"] and path.name in readme, path
