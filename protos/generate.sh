#!/usr/bin/env bash
# Regenerates the Python code for every .proto here. Run from the repository root: `make protos`.
# CI runs it and then `git diff --exit-code`, so the committed code is exactly what this script writes.
# Paths are rooted at the installed package name, so the generated imports read `from resnet_serve.protos import ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. resnet_serve/protos/*.proto
# tritonclient registers the same `inference.*` symbols in protobuf's default pool; ours live in a private pool
# (protos/kserve_pool.py) so the server and tritonclient can share one process. protoc has no option for the
# pool, so this one substitution is part of generating the code.
sed -i 's/_descriptor_pool\.Default()/__import__("resnet_serve.protos.kserve_pool", fromlist=["POOL"]).POOL/' \
  protos/grpc_service_pb2.py protos/model_config_pb2.py
