"""Vendor a CustomResourceDefinition's schema for offline validation: the openAPIV3Schema of the version it
stores, without `description` fields and without the branches we never use (listed in `pruned`), as JSON.

    python deploy/schemas/vendor_crds.py CRD.yaml --source "kserve/kserve v0.20.0 (commit ...) PATH" \
        --prune spec.transformer --prune spec.predictor.sklearn --out deploy/schemas/NAME.json

deploy/validate.py validates our manifests against the result strictly: a field the schema does not declare is
an error (as `kubectl apply --validate=strict` makes it), so a pruned branch may not be used by our manifests.
deploy/schemas/README.md records where each file came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def vendor(crd: dict[str, Any], source: str, prune: list[str]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = _strip(version["schema"]["openAPIV3Schema"])
    for dotted in prune:
        *parents, leaf = dotted.split(".")
        node = schema
        for part in parents:
            node = node["properties"][part]
        del node["properties"][leaf]
    return {
        "apiVersion": f"{crd['spec']['group']}/{version['name']}",
        "kind": crd["spec"]["names"]["kind"],
        "source": source,
        "pruned": prune,
        "schema": schema,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("crd", type=Path)
    parser.add_argument("--source", required=True, help="repository, release, commit and path of the CRD")
    parser.add_argument("--prune", action="append", default=[], metavar="DOTTED.PATH")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    vendored = vendor(yaml.safe_load(args.crd.read_text()), args.source, args.prune)
    args.out.write_text(json.dumps(vendored, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
