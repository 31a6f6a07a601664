"""The Kubernetes and KServe manifests: every kustomization renders and validates offline
(deploy/validate.py), a broken manifest fails that validation, and the rendered objects keep the rules the
deployment depends on."""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from resnet_serve.client.channel import DEFAULT_TIMEOUT_S
from resnet_serve.server.config import OPTIONS, ServerConfig
from resnet_serve.server.observability.metrics import ServerMetrics

pytestmark = pytest.mark.slow  # kubectl kustomize takes about a second per kustomization

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_probes_drain_and_grace_period(overlay: str) -> None:
    pod = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 8001}, probe
    readiness = container["readinessProbe"]
    # Readiness turns false within a few seconds of SIGTERM (health NOT_SERVING), well inside the drain.
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 5
    # Liveness cannot fail during a drain: it needs longer than the grace period of NOT_SERVING.
    liveness = container["livenessProbe"]
    grace = float(env_of(container).get("RESNET_SERVE_GRACE_PERIOD_S", ServerConfig().grace_period_s))
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert pod["securityContext"]["runAsNonRoot"] is True


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
    assert gpu["image"] == "resnet-serve:gpu" and cpu["image"] == "resnet-serve:cpu"
    assert env_of(gpu)["RESNET_SERVE_BUILD_ENGINES"] == "true"
    assert any(m["mountPath"] == env_of(gpu)["RESNET_SERVE_ENGINE_CACHE"] for m in gpu["volumeMounts"])
    assert "nvidia.com/gpu" not in str(cpu["resources"])
    # The first start builds engines: the startup probe allows far longer on the GPU overlay.
    budget = gpu["startupProbe"]["periodSeconds"] * gpu["startupProbe"]["failureThreshold"]
    assert budget >= 600


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
    assert container["image"].startswith("resnet-serve:")
    assert env_of(container)["RESNET_SERVE_MODEL_REPOSITORY"] == "/mnt/models"  # the storage initializer's
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    assert container["readinessProbe"]["grpc"] == {"port": 8001}


def test_the_vendored_schemas_name_their_release() -> None:
    readme = (ROOT / "deploy" / "schemas" / "README.md").read_text()
    for path in sorted((ROOT / "deploy" / "schemas").glob("*.json")):
        vendored = yaml.safe_load(path.read_text())
        assert "commit" in vendored["source"] and path.name in readme, path
